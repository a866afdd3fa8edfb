"""Accuracy, calibration and logit-decomposition statistics: per-class counts and sums that
ranks all-reduce, the reports built from them, and ``ltray eval``'s evaluation of a trained
model (:mod:`ltray.analysis.evaluation`)."""
