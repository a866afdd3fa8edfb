"""The confusion matrix and its figure: per class up to ``MAX_CLASSES_SHOWN`` classes, beyond
that aggregated by shot group (a 3x3 many / medium / few matrix: where each group's images go).

Both are shown row-normalised: row i is the distribution of predictions for true class (group)
i, so a long-tailed split's many-shot rows do not drown the few-shot ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ltray.data.profiles import GROUPS

MAX_CLASSES_SHOWN = 20


def confusion_matrix(
    labels: torch.Tensor, predicted: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Counts [true, predicted] as float64."""
    flat = labels.long().cpu() * num_classes + predicted.long().cpu()
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.double().view(num_classes, num_classes)


def group_confusion(matrix: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    """The class counts summed into [true group, predicted group] counts, groups in
    ``GROUPS`` order (many, medium, few)."""
    index = torch.tensor([GROUPS.index(g) for g in groups])
    member = torch.zeros(len(groups), len(GROUPS), dtype=torch.float64)
    member[torch.arange(len(groups)), index] = 1.0
    return member.T @ matrix @ member


def row_normalised(matrix: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum (a row without images stays zero)."""
    return matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1.0)


def shown_confusion(
    matrix: torch.Tensor, groups: Sequence[str], classes: Sequence[str]
) -> tuple[torch.Tensor, list[str]]:
    """(the row-normalised matrix to draw, its tick labels): per class up to
    ``MAX_CLASSES_SHOWN`` classes, per shot group beyond."""
    if len(classes) <= MAX_CLASSES_SHOWN:
        return row_normalised(matrix), list(classes)
    return row_normalised(group_confusion(matrix, groups)), list(GROUPS)


def plot_confusion(rates: torch.Tensor, labels: Sequence[str], title: str, path: Path) -> None:
    """A PNG of row-normalised rates, each cell annotated, the diagonal being the recalls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    side = max(3.5, 0.45 * n + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            value = rates[i, j].item()
            colour = "white" if value > 0.5 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
