"""Samplers: how often each row of a split is emitted in an epoch, picked by name.

``plain`` emits every row once (the order of :mod:`ltray.data.stream.order` alone). The others
draw the epoch's N samples (N = the split's rows, so an epoch keeps its length, its batch count
and its learning-rate schedule) class first, then instance: a class c with probability p_c,
then one of its rows uniformly, with replacement. The result is each row's repeat count for
the epoch, ``r[i]`` (sum N), a pure function of (labels, seed, epoch), the same on every rank
and loader worker.

The reader stays streaming: it reads row groups in the usual permuted order, emits row i
``r[i]`` times in a row (rows with r = 0 not at all; a row group none of whose rows is drawn is
not read), and passes that stream of N entries through the same partition and shuffle buffer as
the plain order. So the class-balanced order needs no random access to remote shards, ranks x
loader workers split it exactly, and resuming at a batch is as exact as the plain order's.
The labels come from each shard's ``label`` column, read once when the dataset is built (a
small int column: 4 bytes a row).

- ``class_balanced``: p_c uniform over the classes that have rows (Kang et al. 2020, "class-
  balanced sampling"; the sampling cRT and LWS retrain with).
- ``square_root``: p_c proportional to sqrt(n_c) (Mahajan et al. 2018; Kang et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ltray.registry import Registry

ClassProbabilities = Callable[[np.ndarray], np.ndarray | None]

SAMPLERS: Registry[np.ndarray | None] = Registry("sampler")

# a stream of its own, apart from the unit permutation's [seed, epoch] and the shuffle
# buffers' [seed, epoch, rank, worker]
_SALT = 0x53414D50


@SAMPLERS.register("plain")
def plain(class_counts: np.ndarray) -> None:
    """Every row once: no resampling."""
    return None


@SAMPLERS.register("class_balanced")
def class_balanced(class_counts: np.ndarray) -> np.ndarray:
    """Each class that has rows equally likely."""
    present = (np.asarray(class_counts) > 0).astype(np.float64)
    return present / present.sum()


@SAMPLERS.register("square_root")
def square_root(class_counts: np.ndarray) -> np.ndarray:
    """Class c with probability proportional to sqrt(n_c)."""
    weights = np.sqrt(np.asarray(class_counts, dtype=np.float64))
    return weights / weights.sum()


def class_probabilities(name: str, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """p_c of sampler ``name`` for a split with these row labels; None for ``plain``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return SAMPLERS.create(name, counts)


def repeat_counts(
    name: str, labels: np.ndarray, num_classes: int, seed: int, epoch: int
) -> np.ndarray | None:
    """How often each row is emitted in ``epoch``: N draws, class by p_c, then a row of it
    uniformly; None for ``plain`` (every row once, the plain order bit for bit)."""
    probs = class_probabilities(name, labels, num_classes)
    if probs is None:
        return None
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    counts = np.bincount(labels, minlength=num_classes)
    by_class = np.argsort(labels, kind="stable")  # rows of class c: by_class[first[c]:...]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng([seed, epoch, _SALT])
    drawn_class = rng.choice(num_classes, size=n, p=probs)
    within = rng.integers(0, np.maximum(counts[drawn_class], 1))
    rows = by_class[first[drawn_class] + within]
    return np.bincount(rows, minlength=n).astype(np.int64)
