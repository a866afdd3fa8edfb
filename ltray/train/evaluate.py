"""One evaluation pass: per-class counts, loss and the logit decomposition, summed over ranks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ltray.analysis.accuracy import accuracy_report
from ltray.analysis.decomposition import DecompositionAccumulator, summarize_decomposition
from ltray.train.device import Normalizer, Placement


@dataclass
class EvalCounts:
    """Sums, never averages, so that ranks can add them up.

    ``loss_sum`` is the cross-entropy of the logits the prediction is made from (what a user
    reads as the evaluation loss); ``term_sums`` holds each term of the training objective on
    its own (a margin CE, a regulariser), never their weighted total.
    """

    correct: torch.Tensor
    seen: torch.Tensor
    loss_sum: torch.Tensor
    decomposition: DecompositionAccumulator
    term_sums: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def empty(cls, num_classes: int) -> EvalCounts:
        zeros = torch.zeros(num_classes, dtype=torch.float64)
        return cls(
            zeros.clone(),
            zeros.clone(),
            torch.zeros((), dtype=torch.float64),
            DecompositionAccumulator(num_classes),
        )

    def metrics(
        self, groups: Sequence[str], classes: Sequence[str], prefix: str
    ) -> dict[str, float]:
        """Top-1 (overall, per group, per class up to 100 classes; beyond, per-class numbers go
        to the decomposition table only), the CE of the predicted logits as ``{prefix}/loss``
        and each objective term as ``{prefix}/loss_<term>``."""
        metrics = accuracy_report(self.correct, self.seen, groups, classes, prefix)
        seen = max(self.seen.sum().item(), 1.0)
        metrics[f"{prefix}/loss"] = self.loss_sum.item() / seen
        for name, total in self.term_sums.items():
            metrics[f"{prefix}/loss_{name}"] = total.item() / seen
        if len(classes) > 100:
            metrics = {k: v for k, v in metrics.items() if "/acc_class/" not in k}
        return metrics

    def decomposition_table(
        self,
        weight: torch.Tensor,
        train_counts: Sequence[int],
        groups: Sequence[str],
        classes: Sequence[str],
    ) -> dict[str, Any]:
        """The logit decomposition of this evaluation (metrics per group, and the per-class
        table with each class's accuracy and name)."""
        table = summarize_decomposition(self.decomposition, weight, train_counts, groups)
        accuracy = 100.0 * self.correct / self.seen.clamp_min(1.0)
        table["per_class"]["accuracy"] = accuracy.tolist()
        table["per_class"]["class"] = list(classes)
        return table

    def all_reduce(self, device: torch.device) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        tensors = {"correct": self.correct, "seen": self.seen, "loss_sum": self.loss_sum}
        tensors.update({f"t.{k}": v for k, v in sorted(self.term_sums.items())})
        tensors.update({f"d.{k}": v for k, v in self.decomposition.state_tensors().items()})
        reduced = {}
        for name, tensor in tensors.items():
            moved = tensor.to(device)
            dist.all_reduce(moved)
            reduced[name] = moved.cpu()
        self.correct, self.seen = reduced["correct"], reduced["seen"]
        self.loss_sum = reduced["loss_sum"]
        self.term_sums = {k[2:]: v for k, v in reduced.items() if k.startswith("t.")}
        self.decomposition.load_state_tensors(
            {k[2:]: v for k, v in reduced.items() if k.startswith("d.")}
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    normalize: Normalizer,
    placement: Placement,
    num_classes: int,
    max_batches: int | None = None,
) -> EvalCounts:
    """Top-1 counts per class, the loss, and decomposition sums over this rank's share."""
    model.eval()
    counts = EvalCounts.empty(num_classes)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        images = normalize(batch["image"])
        labels = batch["label"].to(placement.device)
        with placement.autocast():
            out = model(images)
        result = criterion(out, labels, model.head)
        logits = criterion.predict_logits(out).float()
        hits = (logits.argmax(dim=1) == labels).double().cpu()
        labels_cpu = labels.cpu()
        counts.correct.index_add_(0, labels_cpu, hits)
        counts.seen.index_add_(0, labels_cpu, torch.ones_like(hits))
        counts.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double().cpu()
        for name, value in result.terms.items():
            previous = counts.term_sums.get(name, torch.zeros((), dtype=torch.float64))
            counts.term_sums[name] = previous + value.detach().double().cpu() * len(labels_cpu)
        counts.decomposition.update(
            out.features.detach().float(), labels, model.head.weight.detach().float()
        )
    return counts
