"""One row of bench/gpu_check.sh's reproduction table, from an `ltray train --local` log.

    python bench/repro_row.py NAME LOG DATA [RUNS]
    python bench/repro_row.py --header        # the table's two header lines

Reads the final metrics (``test/acc: 64.55`` lines) and the progress lines' images per second
(``[ltray] epoch E: ... (N img/s)``; the first epoch, which pays the start-up, left out); the
training rows of the data set DATA turn those into the mean seconds an epoch.

With RUNS, the run's storage folder (it holds this one run), the row also says where the time
went, from the epoch records of the run's latest checkpoint: the mean seconds an epoch
(``time/wall_s``, the first epoch left out) split into training (``train/epoch_s``), evaluation
(``time/eval_s``, over all those epochs) and the rest (checkpoints, logs); the first epoch's
seconds (set-up included); and, where the log ends with gpu_check.sh's ``[gpu-check] process
wall N s``, the whole process against the sum of its epochs (the rest: start-up, imports, the
final test evaluation).
"""

from __future__ import annotations

import re
import statistics
import sys
from typing import Any

from ltray.data import read_manifest

HEADER = (
    "| loss | test top-1 | many | medium | few | mean epoch s (img/s) | epochs done "
    "| s an epoch: wall (train + eval + rest) | first epoch s | run s: process (epochs + rest) |"
)


def row(name: str, text: str, train_rows: int, history: list[dict[str, Any]] | None = None) -> str:
    final = dict(re.findall(r"^\s+(test/acc\w*): ([\d.]+)$", text, re.MULTILINE))
    rates = [float(r) for r in re.findall(r"^\[ltray\] epoch \d+: .*\((\d+) img/s\)$", text, re.M)]
    steady = rates[1:] or rates
    rate = statistics.mean(steady) if steady else float("nan")
    epoch_s = f"{train_rows / rate:.2f}" if steady else "?"
    cells = [final.get(f"test/acc{g}", "-") for g in ("", "_many", "_medium", "_few")]
    cells += [f"{epoch_s} ({rate:.0f})", str(len(rates)), *time_cells(text, history or [])]
    return f"| {name} | {' | '.join(cells)} |"


def time_cells(text: str, history: list[dict[str, Any]]) -> list[str]:
    """[wall (train + eval + rest) an epoch, the first epoch, process (epochs + rest)]."""
    timed = [r for r in history if "time/wall_s" in r]
    if not timed:
        return ["?", "?", "?"]
    later = timed[1:] or timed
    wall = statistics.mean(r["time/wall_s"] for r in later)
    train = statistics.mean(r["train/epoch_s"] for r in later)
    evaluation = sum(r.get("time/eval_s", 0.0) for r in later) / len(later)
    epoch = f"{wall:.2f} ({train:.2f} + {evaluation:.2f} + {wall - train - evaluation:.2f})"
    epochs = sum(r["time/wall_s"] for r in timed)
    found = re.search(r"^\[gpu-check\] process wall (\d+) s$", text, re.MULTILINE)
    run = f"? ({epochs:.0f} + ?)"
    if found:
        run = f"{found[1]} ({epochs:.0f} + {int(found[1]) - epochs:.0f})"
    return [epoch, f"{timed[0]['time/wall_s']:.2f}", run]


def latest_history(runs: str) -> list[dict[str, Any]]:
    """The epoch records of the latest checkpoint of the one run in the folder ``runs``."""
    from ltray.train.session import LocalSession
    from ltray.train.storage import Storage

    storage = Storage(runs)
    names = storage.list("") if storage.exists("") else []
    states = [LocalSession(storage, n, keep=1).latest_state() for n in names]
    states = [s for s in states if s is not None]
    return states[0]["history"] if len(states) == 1 else []


if __name__ == "__main__" and sys.argv[1:] == ["--header"]:
    print(HEADER)
    print("|" + " --- |" * (HEADER.count("|") - 1))
elif __name__ == "__main__":
    name, log, data = sys.argv[1:4]
    history = latest_history(sys.argv[4]) if len(sys.argv) > 4 else []
    with open(log, encoding="utf-8", errors="replace") as handle:
        print(row(name, handle.read(), read_manifest(data).num_rows("train"), history))
