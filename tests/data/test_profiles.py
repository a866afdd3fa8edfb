import math

import pytest

from ltray.data.profiles import (
    PROFILES,
    check_imbalance,
    exponential_counts,
    long_tail_counts,
    pareto_counts,
    shot_group,
    shot_groups,
    smallest_imbalance,
)
from ltray.errors import LtrayError


@pytest.mark.parametrize(
    ("imbalance", "total"), [(10, 20_431), (50, 13_996), (100, 12_406), (200, 11_203)]
)
def test_exponential_matches_cifar10_lt_protocol(imbalance, total):
    counts = exponential_counts(5000, 10, imbalance)
    assert sum(counts) == total
    assert counts[0] == 5000 and counts[-1] == 5000 // imbalance


def test_exponential_if100_counts():
    assert exponential_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_cifar100_lt_if100_total():
    assert sum(exponential_counts(500, 100, 100)) == 10_847  # the usual CIFAR-100-LT size


@pytest.mark.parametrize("name", PROFILES.names())
@pytest.mark.parametrize(
    ("n_max", "classes", "imbalance"), [(500, 100, 100), (1280, 1000, 256), (7, 3, 1)]
)
def test_profiles_are_non_increasing_with_exact_ends(name, n_max, classes, imbalance):
    counts = long_tail_counts(name, n_max, classes, imbalance)
    assert len(counts) == classes
    assert counts[0] == n_max
    assert counts[-1] == max(1, int(n_max / imbalance))
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    assert min(counts) >= 1


def test_pareto_formula():
    a = math.log(100) / math.log(10)
    assert pareto_counts(5000, 10, 100)[:-1] == [int(5000 * (c + 1) ** -a) for c in range(9)]
    # a power law has a heavier head drop and a flatter tail than the exponential profile
    exp, par = exponential_counts(5000, 10, 100), pareto_counts(5000, 10, 100)
    assert par[1] < exp[1]
    assert par[-2] / par[-1] < exp[-2] / exp[-1]


def test_one_class_and_bad_arguments():
    assert exponential_counts(9, 1, 10) == [9] == pareto_counts(9, 1, 10)
    with pytest.raises(LtrayError, match="imbalance"):
        exponential_counts(100, 10, 0.5)
    with pytest.raises(LtrayError, match="n_max"):
        pareto_counts(0, 10, 10)
    with pytest.raises(LtrayError, match="unknown long-tail profile 'zipf'"):
        long_tail_counts("zipf", 10, 10, 10)


def test_shot_groups_boundaries():
    assert [shot_group(n) for n in (101, 100, 20, 19)] == ["many", "medium", "medium", "few"]
    assert shot_groups([5000, 50, 3], many=40, few=4) == ["many", "many", "few"]
    assert shot_groups(exponential_counts(5000, 10, 100)).count("many") == 8
    with pytest.raises(LtrayError):
        shot_group(5, many=10, few=20)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0.99])
def test_imbalance_must_be_finite_and_at_least_one(value):
    with pytest.raises(LtrayError, match=r"must be a finite number >= 1 .*got"):
        check_imbalance(value)
    with pytest.raises(LtrayError, match="must be a finite number"):
        exponential_counts(100, 10, value)


def test_an_imbalance_past_n_max_is_refused_not_clipped():
    assert exponential_counts(40, 5, 40)[-1] == 1
    with pytest.raises(LtrayError, match="needs at least 41 images in the largest class"):
        exponential_counts(40, 5, 40.5)  # int(40 / 40.5) = 0 would have become 1: IF 40


@pytest.mark.parametrize("name", PROFILES.names())
def test_smallest_imbalance_is_the_smallest_that_fits(name):
    available = [10, 10, 2]
    best = smallest_imbalance(name, 10, available)
    assert best is not None

    def fits(imbalance):
        counts = long_tail_counts(name, 10, 3, imbalance)
        return all(n <= have for n, have in zip(counts, available, strict=True))

    assert fits(best) and not fits(best * (1 - 5e-3))  # 3 significant digits, rounded up
    assert smallest_imbalance(name, 10, [10, 10, 10]) == 1.0
    assert smallest_imbalance(name, 10, [2, 10, 10]) is None  # the head class is too small
