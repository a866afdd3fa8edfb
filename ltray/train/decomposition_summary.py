"""The logit decomposition of one evaluation, as a few metrics per epoch plus the full table.

z_j = ||w_j|| ||f|| cos(theta_j) + b_j: the metrics follow each factor against class frequency
(per many / medium / few group, and as a rank correlation with the training count), so the
MLflow UI shows whether head classes own larger classifier norms, larger feature norms, or
better-aligned features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ltray.decomposition import DecompositionAccumulator, classifier_geometry
from ltray.metrics import GROUPS

PER_CLASS_KEYS = ("feature_norm_mean", "cos_target_mean", "cos_other_max_mean", "classifier_norm")


def _rank(values: torch.Tensor) -> torch.Tensor:
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation (ties broken by position); nan for fewer than 3 finite pairs."""
    keep = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[keep].double(), b[keep].double()
    if len(a) < 3:
        return float("nan")
    ra, rb = _rank(a), _rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else float("nan")


def summarize_decomposition(
    accumulator: DecompositionAccumulator,
    weight: torch.Tensor,
    train_counts: Sequence[int],
    groups: Sequence[str],
) -> dict[str, Any]:
    per_class = accumulator.compute()
    per_class["classifier_norm"] = weight.double().norm(dim=1).cpu()
    geometry = classifier_geometry(weight)
    counts = torch.tensor(train_counts, dtype=torch.float64)

    metrics: dict[str, float] = {}
    for key in PER_CLASS_KEYS:
        values = torch.as_tensor(per_class[key], dtype=torch.float64)
        short = key.removesuffix("_mean")
        for group in GROUPS:
            members = [i for i, g in enumerate(groups) if g == group]
            if members:
                chosen = values[members]
                chosen = chosen[torch.isfinite(chosen)]
                if len(chosen):
                    metrics[f"decomp/{short}/{group}"] = chosen.mean().item()
        metrics[f"decomp/{short}/spearman_vs_count"] = spearman(values, counts)
    for key in ("min", "mean", "std"):
        metrics[f"decomp/angle_{key}_deg"] = float(geometry[f"angle_{key}"])
    metrics = {k: v for k, v in metrics.items() if v == v}  # drop nan: MLflow plots them badly

    table = {k: torch.as_tensor(v).tolist() for k, v in per_class.items()}
    table["train_count"] = list(train_counts)
    table["group"] = list(groups)
    table["nearest_angle_deg"] = torch.as_tensor(geometry["nearest_angle"]).tolist()
    return {"metrics": metrics, "per_class": table}
