"""The logit decomposition: accumulator vs a direct float64 computation, merging, geometry."""

import math

import numpy as np
import pytest
import torch

from ltray.analysis.decomposition import (
    DecompositionAccumulator,
    classifier_geometry,
    summarize_decomposition,
)

C, D = 6, 5


def data(seed=0, n=40):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, D, generator=gen) * torch.rand(n, 1, generator=gen) * 4
    labels = torch.randint(0, C - 1, (n,), generator=gen)  # class C-1 never appears
    weight = torch.randn(C, D, generator=gen)
    return features, labels, weight


def direct(features, labels, weight):
    """Per sample in float64 from the definitions, then per-class means."""
    f, w = features.double(), weight.double()
    rows = {c: [] for c in range(C)}
    for x, y in zip(f, labels.tolist(), strict=True):
        cos = [float(x @ w[j] / (x.norm() * w[j].norm())) for j in range(C)]
        rows[y].append((float(x.norm()), cos[y], max(cos[j] for j in range(C) if j != y)))
    mean = {
        key: np.array([np.mean([r[k] for r in rows[c]]) if rows[c] else np.nan for c in range(C)])
        for k, key in enumerate(("feature_norm_mean", "cos_target_mean", "cos_other_max_mean"))
    }
    mean["count"] = np.array([len(rows[c]) for c in range(C)])
    mean["classifier_norm"] = w.norm(dim=1).numpy()
    return mean


def assert_matches(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_accumulator_matches_a_direct_float64_computation():
    features, labels, weight = data()
    acc = DecompositionAccumulator(C)
    for start in range(0, len(labels), 16):  # batches of 16, 16, 8
        acc.update(features[start : start + 16], labels[start : start + 16], weight)
    got = acc.compute()
    assert_matches(got, direct(features, labels, weight))
    assert math.isnan(got["feature_norm_mean"][C - 1]) and got["count"][C - 1] == 0


def test_merging_two_halves_by_summing_state_equals_the_whole():
    features, labels, weight = data(1, n=50)
    whole, first, second = (DecompositionAccumulator(C) for _ in range(3))
    whole.update(features, labels, weight)
    first.update(features[:17], labels[:17], weight)
    second.update(features[17:], labels[17:], weight)
    # what an all-reduce with SUM does to the state tensors of two ranks
    merged = {k: v + second.state_tensors()[k] for k, v in first.state_tensors().items()}
    first.load_state_tensors(merged)
    # The state is float64 sums of per-sample values computed in float32 (norms, cosines of
    # order 1). A batch of 50 and batches of 17 + 33 run different BLAS blockings, so each
    # per-sample value may differ by a few float32 ulps (eps = 1.2e-7); a mean of such values
    # then differs by as much, relative (rtol), or absolute for cosines near 0 (atol). 1e-6 is
    # about 8 ulps; merging itself adds only float64 rounding.
    for key, value in whole.compute().items():
        np.testing.assert_allclose(first.compute()[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
    assert all(not torch.is_floating_point(v) or v.dtype == torch.float64 for v in merged.values())


def test_reset_clears_the_sums():
    features, labels, weight = data(2)
    acc = DecompositionAccumulator(C)
    acc.update(features, labels, weight)
    acc.reset()
    assert acc.compute()["count"].sum() == 0


def test_classifier_geometry_matches_all_pairs():
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(23, 7, generator=gen)
    geo = classifier_geometry(weight, block_rows=5)  # 23 = 4 blocks of 5 + 3
    u = weight.double() / weight.double().norm(dim=1, keepdim=True)
    angles = torch.rad2deg(torch.acos((u @ u.T).clamp(-1, 1)))
    off = angles[~torch.eye(23, dtype=torch.bool)]
    assert geo["angle_min"] == pytest.approx(off.min().item(), abs=1e-3)
    assert geo["angle_mean"] == pytest.approx(off.mean().item(), abs=1e-3)
    assert geo["angle_std"] == pytest.approx(off.std(unbiased=False).item(), abs=1e-3)
    nearest = angles.masked_fill(torch.eye(23, dtype=torch.bool), math.inf).amin(dim=1)
    np.testing.assert_allclose(geo["nearest_angle"], nearest.numpy(), atol=1e-3)


def test_classifier_geometry_of_a_simplex():
    c = 4  # regular simplex in R^3: every pair at arccos(-1/3)
    simplex = torch.eye(c) - 1.0 / c
    geo = classifier_geometry(simplex)
    expected = math.degrees(math.acos(-1 / (c - 1)))
    assert geo["angle_min"] == pytest.approx(expected, abs=1e-3)
    assert geo["angle_std"] == pytest.approx(0.0, abs=1e-2)


def test_angle_histogram_counts_every_pair_once_in_its_degree():
    c, d = 23, 7
    weight = torch.randn(c, d, generator=torch.Generator().manual_seed(3))
    geo = classifier_geometry(weight, block_rows=5)  # 23 = 4 blocks of 5 + 3
    u = weight.double() / weight.double().norm(dim=1, keepdim=True)
    i, j = torch.triu_indices(c, c, offset=1)
    theta = torch.acos((u[i] * u[j]).sum(dim=1).clamp(-1, 1)).numpy()  # radians, float64
    # float32: each unit row and the d-term dot product are off by a few eps in cos, and
    # acos turns an error e in cos into e / sin(theta) radians; 8 d eps is a generous bound
    eps = float(torch.finfo(torch.float32).eps)
    slack = np.degrees(8 * d * eps / np.sin(theta) + 4 * eps * theta)
    degrees = np.degrees(theta)
    assert (np.floor(degrees - slack) == np.floor(degrees + slack)).all(), "pick another matrix"
    expected = np.bincount(np.floor(degrees).astype(int), minlength=180)
    np.testing.assert_array_equal(geo["angle_counts"], expected)
    assert geo["angle_counts"].sum() == c * (c - 1) // 2
    assert geo["angle_counts"].dtype == np.int64


def test_angle_histogram_of_a_simplex_and_the_closed_last_bin():
    c = 4  # every pair at arccos(-1/3) = 109.47 degrees
    assert geo_counts(torch.eye(c) - 1.0 / c) == {109: 6}
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # 180, 90 and 90 degrees
    assert geo_counts(opposite) == {179: 1, 90: 2}


def geo_counts(weight):
    counts = classifier_geometry(weight)["angle_counts"]
    return {int(b): int(n) for b, n in enumerate(counts) if n}


def test_summary_logs_the_histogram_with_its_edges():
    features, labels, weight = data()
    acc = DecompositionAccumulator(C)
    acc.update(features, labels, weight)
    summary = summarize_decomposition(acc, weight, [50, 40, 30, 20, 10, 5], ["many"] * C)
    histogram = summary["angle_histogram"]
    assert histogram["bin_edges_deg"] == [float(e) for e in range(181)]
    assert sum(histogram["counts"]) == C * (C - 1) // 2
    assert all(isinstance(n, int) for n in histogram["counts"])
