"""The logit decomposition the paper tracks: z_j = ||w_j|| ||f|| cos(theta_j) + b_j.

Per true class, over an epoch: the mean feature norm ||f||, the mean target cosine
cos(theta_y), and the mean of the largest other cosine max_{j != y} cos(theta_j) (how close
the nearest wrong class is); plus each class's classifier norm ||w_j||. The accumulator keeps
sums and counts only, so ranks merge by summing their state tensors (all-reduce), never by
averaging averages. ``classifier_geometry`` describes the angles between classifier rows, and
``summarize_decomposition`` turns one evaluation into a few metrics per frequency group (and a
rank correlation with the training count), the full per-class table and the histogram of the
pairwise angles between classifier rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltray.data.profiles import GROUPS

_SUMS = ("feature_norm_sum", "cos_target_sum", "cos_other_max_sum")


class DecompositionAccumulator:
    """Per-class sums of ||f||, cos(theta_y) and max_{j != y} cos(theta_j), and counts.

    ``classifier_norm`` is taken from the last ``update`` (the weights are the same on every
    rank), so it is not part of the summed state.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._state: dict[str, Tensor] = {}
        self._classifier_norm: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        zeros = torch.zeros(self.num_classes, dtype=torch.float64)
        self._state = {name: zeros.clone() for name in _SUMS}
        self._state["count"] = torch.zeros(self.num_classes, dtype=torch.int64)
        self._classifier_norm = None

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, head_weight: Tensor) -> None:
        """Add a batch: features [B, D], true labels [B], classifier rows [C, D]."""
        features, head_weight = features.detach().float(), head_weight.detach().float()
        cos = F.normalize(features, dim=1) @ F.normalize(head_weight, dim=1).T
        labels = labels.long()
        cos_target = cos.gather(1, labels[:, None]).squeeze(1)
        cos_other_max = cos.scatter(1, labels[:, None], -math.inf).amax(dim=1)
        device = self._state["count"].device
        if device != features.device:
            self._state = {k: v.to(features.device) for k, v in self._state.items()}
        for name, values in zip(
            _SUMS, (features.norm(dim=1), cos_target, cos_other_max), strict=True
        ):
            self._state[name].index_add_(0, labels, values.double())
        self._state["count"].index_add_(0, labels, torch.ones_like(labels))
        self._classifier_norm = head_weight.norm(dim=1).double()

    def state_tensors(self) -> dict[str, Tensor]:
        """The sums and counts (the live tensors: all-reduce them in place with SUM)."""
        return self._state

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        """Replace the sums and counts, e.g. with all-reduced or merged ones."""
        self._state = {name: state[name].clone() for name in (*_SUMS, "count")}

    def compute(self) -> dict[str, np.ndarray]:
        """Per-class means (NaN where a class had no samples), counts and classifier norms."""
        count = self._state["count"].cpu()
        safe = count.clamp_min(1).double()
        out = {
            name.removesuffix("_sum") + "_mean": torch.where(
                count > 0, self._state[name].cpu() / safe, math.nan
            ).numpy()
            for name in _SUMS
        }
        out["count"] = count.numpy()
        norm = self._classifier_norm
        out["classifier_norm"] = (
            np.full(self.num_classes, np.nan) if norm is None else norm.cpu().numpy()
        )
        return out


ANGLE_BINS = 180  # 1 degree each over [0, 180]: the pairwise-angle histogram logged per epoch


@torch.no_grad()
def classifier_geometry(
    weight: Tensor, block_rows: int = 1024, angle_bins: int = ANGLE_BINS
) -> dict:
    """Angles (degrees) between the classifier rows.

    Returns ``angle_min``, ``angle_mean``, ``angle_std`` (floats, over pairs i != j),
    ``nearest_angle`` (per class: the angle to its nearest other row) and ``angle_counts``
    (int64 [angle_bins]: how many pairs i < j fall in each of ``angle_bins`` equal bins over
    [0, 180] degrees, the last bin closed; the paper's angle distribution, kept as counts so
    the logged record stays small whatever the class count). Computed a block of rows at a
    time, so 8,142 classes need no C x C matrix.
    """
    unit = F.normalize(weight.detach().float(), dim=1)
    num_rows = unit.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=unit.device)
    total_sq = torch.zeros_like(total)
    nearest = torch.empty(num_rows, dtype=torch.float64, device=unit.device)
    counts = torch.zeros(angle_bins, dtype=torch.int64, device=unit.device)
    columns = torch.arange(num_rows, device=unit.device)
    for r0 in range(0, num_rows, block_rows):
        r1 = min(r0 + block_rows, num_rows)
        angles = torch.rad2deg(torch.acos((unit[r0:r1] @ unit.T).clamp_(-1.0, 1.0))).double()
        upper = columns[None, :] > columns[r0:r1, None]  # each pair once: i < j
        pair_angles = angles[upper & angles.isfinite()]
        bins = (pair_angles * (angle_bins / 180.0)).long().clamp_(0, angle_bins - 1)
        counts += torch.bincount(bins, minlength=angle_bins)
        angles.diagonal(offset=r0).zero_()  # a row with itself adds 0 to the sums
        total += angles.sum()
        total_sq += angles.square().sum()
        angles.diagonal(offset=r0).fill_(math.inf)
        nearest[r0:r1] = angles.amin(dim=1)
    n_pairs = num_rows * (num_rows - 1)
    mean = total / n_pairs
    variance = (total_sq / n_pairs - mean.square()).clamp_min(0.0)
    return {
        "angle_min": nearest.min().item(),
        "angle_mean": mean.item(),
        "angle_std": variance.sqrt().item(),
        "nearest_angle": nearest.cpu().numpy(),
        "angle_counts": counts.cpu().numpy(),
    }


def angle_bin_edges(angle_bins: int = ANGLE_BINS) -> list[float]:
    """The edges (degrees) of ``classifier_geometry``'s angle histogram."""
    return np.linspace(0.0, 180.0, angle_bins + 1).tolist()


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
    angle_counts = geometry["angle_counts"]
    histogram = {
        "bin_edges_deg": angle_bin_edges(len(angle_counts)),
        "counts": angle_counts.tolist(),
    }
    return {"metrics": metrics, "per_class": table, "angle_histogram": histogram}
