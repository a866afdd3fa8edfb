"""Accuracy and logit-decomposition statistics: per-class counts and sums that ranks all-reduce,
and the reports built from them."""
