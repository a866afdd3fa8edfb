"""Long-tail profiles: how many training images each class keeps, and its shot group.

A profile maps (n_max, num_classes, imbalance) to per-class counts, largest first, with
n_0 = n_max and n_{C-1} = n_max / IF (rounded down, at least 1):

- ``exp`` (Cui et al. 2019, Cao et al. 2019; CIFAR-10/100-LT): n_c = int(n_max * IF^(-c/(C-1))).
- ``pareto`` (a power law, as the Pareto / Zipf tails of ImageNet-LT and iNaturalist):
  n_c = int(n_max * (c + 1)^(-a)) with a = ln(IF) / ln(C), so that n_{C-1} = n_max / IF.
  The head falls fast and the tail is long and flat, unlike ``exp`` whose decay is even.

Shot groups follow the usual rule: many > 100 train images, few < 20, medium in between
(both thresholds are parameters; ltray.config.DataConfig carries them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ltray.errors import LtrayError
from ltray.registry import Registry

PROFILES: Registry[list[int]] = Registry("long-tail profile")
GROUPS = ("many", "medium", "few")


def check_imbalance(imbalance: float) -> None:
    """An imbalance factor is a finite number >= 1 (inf and nan are not)."""
    if not (math.isfinite(imbalance) and imbalance >= 1.0):
        raise LtrayError(
            f"--imbalance must be a finite number >= 1 (largest class / smallest), got {imbalance}"
        )


def _check(n_max: int, num_classes: int, imbalance: float) -> None:
    if n_max < 1:
        raise LtrayError(f"n_max must be at least 1, got {n_max}")
    if num_classes < 1:
        raise LtrayError(f"the number of classes must be at least 1, got {num_classes}")
    check_imbalance(imbalance)
    if num_classes > 1 and imbalance > n_max:
        raise LtrayError(
            f"--imbalance {imbalance:g} needs at least {math.ceil(imbalance)} images in the "
            f"largest class, which has {n_max}: the smallest class would get "
            f"{n_max / imbalance:.2g} (at most --imbalance {n_max} here)"
        )


@PROFILES.register("exp")
def exponential_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """n_c = int(n_max * IF^(-c/(C-1))), the CIFAR-LT protocol."""
    _check(n_max, num_classes, imbalance)
    if num_classes == 1:
        return [n_max]
    last = num_classes - 1
    return [max(1, int(n_max * imbalance ** (-c / last))) for c in range(num_classes)]


@PROFILES.register("pareto")
def pareto_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """n_c = int(n_max * (c+1)^(-a)), a = ln(IF)/ln(C): a power-law (Pareto/Zipf) tail."""
    _check(n_max, num_classes, imbalance)
    if num_classes == 1:
        return [n_max]
    alpha = math.log(imbalance) / math.log(num_classes)
    counts = [max(1, int(n_max * (c + 1) ** (-alpha))) for c in range(num_classes)]
    counts[-1] = max(1, int(n_max / imbalance + 1e-9))  # exact endpoint despite float error
    return counts


def long_tail_counts(profile: str, n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class counts of a named profile (see the module docstring for the formulas)."""
    fn: Callable[..., list[int]] = PROFILES.get(profile)
    return fn(n_max, num_classes, imbalance)


def smallest_imbalance(profile: str, n_max: int, available: Sequence[int]) -> float | None:
    """The smallest IF (rounded up to 3 significant digits) whose per-class counts every class
    can meet from ``available`` images, or None if no IF up to n_max fits (a class in the
    head has too few). Counts fall as IF grows, so a bisection finds it."""

    def fits(imbalance: float) -> bool:
        targets = long_tail_counts(profile, n_max, len(available), imbalance)
        return all(t <= a for t, a in zip(targets, available, strict=True))

    if len(available) < 2 or fits(1.0):
        return 1.0
    if not fits(float(n_max)):
        return None
    lo, hi = 1.0, float(n_max)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    step = 10.0 ** (math.floor(math.log10(hi)) - 2)
    rounded = math.ceil(hi / step - 1e-9) * step
    return float(f"{rounded:.3g}") if fits(float(f"{rounded:.3g}")) else hi


def shot_group(count: int, many: int = 100, few: int = 20) -> str:
    """'many' if count > many, 'few' if count < few, else 'medium'."""
    if few > many:
        raise LtrayError(f"few threshold ({few}) must not exceed the many threshold ({many})")
    if count > many:
        return "many"
    if count < few:
        return "few"
    return "medium"


def shot_groups(counts: Sequence[int], many: int = 100, few: int = 20) -> list[str]:
    """The shot group of every class from its train count."""
    return [shot_group(int(n), many, few) for n in counts]
