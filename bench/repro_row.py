"""One row of bench/gpu_check.sh's reproduction table, from an `ltray train` log.

    python bench/repro_row.py NAME LOG DATA

Reads the final metrics (``test/acc: 64.55`` lines) and the progress lines' images per second
(``[ltray] epoch E: ... (N img/s)``; the first epoch, which pays the start-up, left out); the
training rows of the data set DATA turn those into the mean seconds an epoch.
"""

from __future__ import annotations

import re
import statistics
import sys

from ltray.data import read_manifest


def row(name: str, text: str, train_rows: int) -> str:
    final = dict(re.findall(r"^\s+(test/acc\w*): ([\d.]+)$", text, re.MULTILINE))
    rates = [float(r) for r in re.findall(r"^\[ltray\] epoch \d+: .*\((\d+) img/s\)$", text, re.M)]
    steady = rates[1:] or rates
    rate = statistics.mean(steady) if steady else float("nan")
    epoch_s = f"{train_rows / rate:.2f}" if steady else "?"
    cells = [final.get(f"test/acc{g}", "-") for g in ("", "_many", "_medium", "_few")]
    return f"| {name} | {' | '.join(cells)} | {epoch_s} ({rate:.0f}) | {len(rates)} |"


if __name__ == "__main__":
    name, log, data = sys.argv[1:4]
    with open(log, encoding="utf-8", errors="replace") as handle:
        print(row(name, handle.read(), read_manifest(data).num_rows("train")))
