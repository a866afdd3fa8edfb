"""``--val-per-class N``: a balanced val split held out from a source's training images.

Each class gives N images, drawn (seeded) first from the images the long-tail profile leaves
out and, only where a class has fewer than N of those, from the images it keeps; train is then
what the profile kept minus what val took. So CIFAR-10 at IF 100 with N = 50 keeps every class
at its published count except class 0 (5,000 images, all kept: 4,950 train). A class with
fewer than N + 1 training images in all is refused: it would be left without a train image.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ltray.data.prepare.image_refs import Item
from ltray.errors import LtrayError

_STREAM = zlib.crc32(b"val-per-class")  # keeps these draws apart from other seeded ones


@dataclass
class ValCarve:
    """Where each class's val images came from (label order)."""

    per_class: int
    from_left_out: list[int]
    from_kept: list[int]
    kept_before: list[int]  # what the profile kept, before val took from it

    def record(self) -> dict[str, Any]:
        """The manifest's summary of the carve (``profile.val_split``)."""
        return {
            "per_class": self.per_class,
            "from_left_out": sum(self.from_left_out),
            "from_kept": sum(self.from_kept),
            "classes_reduced": [c for c, n in enumerate(self.from_kept) if n],
        }

    def warning(self, classes: list[str]) -> str | None:
        """One line naming the classes whose train count val reduced, or None."""
        reduced = [c for c, n in enumerate(self.from_kept) if n]
        if not reduced:
            return None
        shown = ", ".join(
            f"{classes[c]!r} keeps {self.kept_before[c] - self.from_kept[c]:,} of "
            f"{self.kept_before[c]:,}"
            for c in reduced[:3]
        )
        more = f" and {len(reduced) - 3} more" if len(reduced) > 3 else ""
        return (
            f"--val-per-class {self.per_class}: {len(reduced)} class(es) had too few images "
            f"outside the long-tail profile, so val took {sum(self.from_kept):,} of the kept "
            f"train images ({shown}{more})"
        )


def check_val_per_class(n: int) -> None:
    if n < 0:
        raise LtrayError(f"--val-per-class must be >= 0, got {n}")


def _refuse_small(per_class: list[list[Item]], n: int, classes: list[str]) -> None:
    totals = [len(items) for items in per_class]
    short = [c for c, total in enumerate(totals) if total < n + 1]
    if short:
        c = short[0]
        raise LtrayError(
            f"--val-per-class {n}: class {classes[c]!r} (label {c}) has {totals[c]} training "
            f"image(s), fewer than {n} + 1 (val would leave it no train image); this source "
            f"allows at most --val-per-class {min(totals) - 1}"
        )


def carve_val_per_class(
    kept: list[list[Item]],
    left_out: list[list[Item]],
    n: int,
    seed: int,
    classes: list[str],
) -> tuple[list[list[Item]], list[list[Item]], ValCarve]:
    """(train, val, record): N val images per class, left-out images first (see the module
    docstring). Both keep source order (val: left-out picks, then kept ones)."""
    check_val_per_class(n)
    _refuse_small([k + lo for k, lo in zip(kept, left_out, strict=True)], n, classes)
    train, val = [], []
    carve = ValCarve(n, [], [], [len(k) for k in kept])
    for label, (mine, spare) in enumerate(zip(kept, left_out, strict=True)):
        rng = np.random.default_rng([seed, _STREAM, label])
        from_spare = min(n, len(spare))
        picked_spare = sorted(rng.permutation(len(spare))[:from_spare].tolist())
        from_kept = n - from_spare
        picked_kept = set(rng.permutation(len(mine))[:from_kept].tolist())
        val.append([spare[i] for i in picked_spare] + [mine[i] for i in sorted(picked_kept)])
        train.append([it for i, it in enumerate(mine) if i not in picked_kept])
        carve.from_left_out.append(from_spare)
        carve.from_kept.append(from_kept)
    return train, val, carve
