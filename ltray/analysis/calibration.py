"""Expected calibration error from per-class bin sums, so ranks can add them up.

The standard definition (Naeini et al. 2015; Guo et al. 2017): the confidence of a prediction
is its top softmax probability; the predictions fall into M = 15 equal-width bins
((m-1)/M, m/M]; ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|, which is
sum_m |hits_m - confidence_sum_m| / n. Keeping the sums per true class (not only in total)
gives the ECE of any set of classes (a shot group, one class) from the same counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NUM_BINS = 15
COUNT, CONFIDENCE, HITS = 0, 1, 2  # rows of a class's [3, NUM_BINS] sums


def empty_bins(num_classes: int, num_bins: int = NUM_BINS) -> torch.Tensor:
    """[classes, 3, bins] float64 zeros: per true class, per bin, count, confidence sum, hits."""
    return torch.zeros(num_classes, 3, num_bins, dtype=torch.float64)


def bin_sums(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int, num_bins: int = NUM_BINS
) -> torch.Tensor:
    """The [classes, 3, bins] sums of one batch of logits [B, C] (softmax in float64)."""
    logits = logits.detach().cpu()
    predicted = logits.argmax(dim=1)  # the prediction the top-1 count makes, ties included
    probs = torch.softmax(logits.double(), dim=1)
    confidence = probs.gather(1, predicted[:, None]).squeeze(1)
    labels = labels.detach().cpu().long()
    hits = (predicted == labels).double()
    # bin m (0-based) holds (m / M, (m + 1) / M]; a confidence is never 0 (it is >= 1/C)
    which = (torch.ceil(confidence * num_bins).long() - 1).clamp(0, num_bins - 1)
    flat = labels * num_bins + which
    out = empty_bins(num_classes, num_bins)
    size = num_classes * num_bins
    for row, values in ((COUNT, torch.ones_like(hits)), (CONFIDENCE, confidence), (HITS, hits)):
        out[:, row, :] = (
            torch.zeros(size, dtype=torch.float64)
            .index_add_(0, flat, values)
            .view(num_classes, num_bins)
        )
    return out


def expected_calibration_error(bins: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """ECE (a fraction in [0, 1]) of the predictions whose true class is in ``classes`` (all by
    default); NaN without any."""
    chosen = bins if classes is None else bins[torch.as_tensor(list(classes), dtype=torch.long)]
    totals = chosen.sum(dim=0)  # [3, bins]
    n = totals[COUNT].sum().item()
    if n == 0:
        return float("nan")
    return (totals[HITS] - totals[CONFIDENCE]).abs().sum().item() / n
