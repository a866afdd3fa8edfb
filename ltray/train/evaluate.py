"""One evaluation pass: per-class counts, loss and the logit decomposition, summed over ranks.

The counts also hold top-5 hits and the calibration bins (:mod:`ltray.analysis.calibration`);
training reports top-1 only, ``ltray eval`` reports all of them (``metrics(detailed=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ltray.analysis.accuracy import accuracy_report
from ltray.analysis.calibration import bin_sums, empty_bins, expected_calibration_error
from ltray.analysis.decomposition import DecompositionAccumulator, summarize_decomposition
from ltray.data.profiles import GROUPS
from ltray.models.classifier import ModelOutput
from ltray.train.device import Normalizer, Placement

TOP_K = 5


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
    correct_top5: torch.Tensor | None = None  # per class, like ``correct``
    calibration: torch.Tensor | None = None  # [classes, 3, bins], see ltray.analysis.calibration

    @classmethod
    def empty(cls, num_classes: int) -> EvalCounts:
        zeros = torch.zeros(num_classes, dtype=torch.float64)
        return cls(
            zeros.clone(),
            zeros.clone(),
            torch.zeros((), dtype=torch.float64),
            DecompositionAccumulator(num_classes),
            correct_top5=zeros.clone(),
            calibration=empty_bins(num_classes),
        )

    def add_predictions(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch of the scores a prediction is made from (float32, [B, C]): top-1
        and top-5 hits per class, the CE of these logits, the calibration bins."""
        logits = logits.float()
        top = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices
        hits = (logits.argmax(dim=1) == labels).double().cpu()
        hits5 = (top == labels[:, None]).any(dim=1).double().cpu()
        labels_cpu = labels.cpu()
        self.correct.index_add_(0, labels_cpu, hits)
        self.seen.index_add_(0, labels_cpu, torch.ones_like(hits))
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double().cpu()
        if self.correct_top5 is not None:
            self.correct_top5.index_add_(0, labels_cpu, hits5)
        if self.calibration is not None:
            self.calibration += bin_sums(logits, labels_cpu, len(self.correct))

    def metrics(
        self,
        groups: Sequence[str],
        classes: Sequence[str],
        prefix: str,
        detailed: bool = False,
    ) -> dict[str, float]:
        """Top-1 (overall, per group, per class up to 100 classes; beyond, per-class numbers go
        to the decomposition table only), the CE of the predicted logits as ``{prefix}/loss``
        and each objective term as ``{prefix}/loss_<term>``. ``detailed`` adds top-5
        (``{prefix}/acc5...``) and the expected calibration error in percent (``{prefix}/ece``,
        ``{prefix}/ece_many`` ..., ``{prefix}/ece_class/<name>``: over the images of those
        classes)."""
        metrics = accuracy_report(self.correct, self.seen, groups, classes, prefix)
        seen = max(self.seen.sum().item(), 1.0)
        metrics[f"{prefix}/loss"] = self.loss_sum.item() / seen
        for name, total in self.term_sums.items():
            metrics[f"{prefix}/loss_{name}"] = total.item() / seen
        if detailed and self.correct_top5 is not None and self.calibration is not None:
            metrics.update(
                accuracy_report(self.correct_top5, self.seen, groups, classes, prefix, "acc5")
            )
            metrics.update(self._calibration_metrics(groups, classes, prefix))
        if len(classes) > 100:
            metrics = {k: v for k, v in metrics.items() if "_class/" not in k}
        return metrics

    def _calibration_metrics(
        self, groups: Sequence[str], classes: Sequence[str], prefix: str
    ) -> dict[str, float]:
        assert self.calibration is not None
        out = {f"{prefix}/ece": 100.0 * expected_calibration_error(self.calibration)}
        for group in GROUPS:
            members = [i for i, g in enumerate(groups) if g == group and self.seen[i] > 0]
            if members:
                ece = expected_calibration_error(self.calibration, members)
                out[f"{prefix}/ece_{group}"] = 100.0 * ece
        for i, name in enumerate(classes):
            if self.seen[i] > 0:
                ece = expected_calibration_error(self.calibration, [i])
                out[f"{prefix}/ece_class/{name}"] = 100.0 * ece
        return out

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
        if self.correct_top5 is not None and self.calibration is not None:
            tensors.update({"correct_top5": self.correct_top5, "calibration": self.calibration})
        tensors.update({f"t.{k}": v for k, v in sorted(self.term_sums.items())})
        tensors.update({f"d.{k}": v for k, v in self.decomposition.state_tensors().items()})
        reduced = {}
        for name, tensor in tensors.items():
            moved = tensor.to(device)
            dist.all_reduce(moved)
            reduced[name] = moved.cpu()
        self.correct, self.seen = reduced["correct"], reduced["seen"]
        self.loss_sum = reduced["loss_sum"]
        if "calibration" in reduced:
            self.correct_top5, self.calibration = reduced["correct_top5"], reduced["calibration"]
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
    observe: Callable[[ModelOutput, torch.Tensor, torch.Tensor], None] | None = None,
) -> EvalCounts:
    """Top-1 and top-5 counts per class, calibration bins, the loss, and decomposition sums
    over this rank's share. ``observe(out, logits, labels)``, if given, sees every batch (what
    ``ltray eval`` keeps for tau-norm and the confusion matrix)."""
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
        counts.add_predictions(logits, labels)
        if observe is not None:
            observe(out, logits, labels)
        for name, value in result.terms.items():
            previous = counts.term_sums.get(name, torch.zeros((), dtype=torch.float64))
            counts.term_sums[name] = previous + value.detach().double().cpu() * len(labels)
        counts.decomposition.update(
            out.features.detach().float(), labels, model.head.weight.detach().float()
        )
    return counts
