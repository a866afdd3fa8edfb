"""Accuracy from per-class counts: overall, many / medium / few, and per class.

Ranks all-reduce counts (correct and seen per class), never averages, so the numbers are the
same whatever the world size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ltray.data.profiles import GROUPS


def accuracy_report(
    correct: torch.Tensor,
    seen: torch.Tensor,
    groups: Sequence[str],
    class_names: Sequence[str],
    prefix: str,
    name: str = "acc",
) -> dict[str, float]:
    """Top-1 in percent: ``{prefix}/acc``, ``{prefix}/acc_balanced`` (the mean of the per-class
    accuracies, what a sweep selects on by default), ``{prefix}/acc_many`` ...,
    ``{prefix}/acc_class/<name>``. ``name`` renames the family (``acc5`` for top-5 counts).

    A group with no evaluated class is left out rather than reported as zero, and so are
    classes without an evaluated image from the balanced mean.
    """
    correct = correct.double().cpu()
    seen = seen.double().cpu()
    out = {f"{prefix}/{name}": 100.0 * correct.sum().item() / max(seen.sum().item(), 1.0)}
    evaluated = seen > 0
    if evaluated.any():
        per_class = correct[evaluated] / seen[evaluated]
        out[f"{prefix}/{name}_balanced"] = 100.0 * per_class.mean().item()
    for group in GROUPS:
        members = [i for i, g in enumerate(groups) if g == group and seen[i] > 0]
        if members:
            idx = torch.tensor(members)
            out[f"{prefix}/{name}_{group}"] = 100.0 * (correct[idx] / seen[idx]).mean().item()
    for i, class_name in enumerate(class_names):
        if seen[i] > 0:
            out[f"{prefix}/{name}_class/{class_name}"] = 100.0 * correct[i].item() / seen[i].item()
    return out
