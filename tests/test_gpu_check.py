"""bench/gpu_check.sh in its CPU mode, end to end, so the one prepared GPU check cannot rot.

It runs as on a bare GPU box: ``ltray`` is not on PATH (the script calls it through the
checkout), and its parts skip with a reason where they need CUDA. With ../shared/data's
CIFAR-10 archive the reproduction runs (two of its four runs, picked by GPU_CHECK_RUNS, cut to two
epochs of three steps); without it the training parts say they skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_in_cpu_mode_and_writes_its_summary_and_logs(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": "/usr/bin:/bin",  # no venv `ltray`: the script must not need one
        "PYTHON": sys.executable,
        "GPU_CHECK_QUICK": "1",
        "GPU_CHECK_RUNS": "balanced_softmax dr-prior",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "no CUDA device" in summary
    for part in ("pipeline", "uniformity", "step", "decode"):
        assert f"- {part}: exit 0 in " in summary, summary
    for part in ("cuda-tests", "host-syncs"):  # what needs CUDA says so
        assert f"- {part}: skipped: " in summary, summary
    with tarfile.open(out / "logs.tar.gz") as logs:
        names = set(logs.getnames())
    assert {"logs/pipeline.txt", "logs/uniformity.txt", "logs/device.txt"} <= names
    assert "ratio (pipeline / synthetic" in _member(out, "logs/pipeline.txt")
    uniformity = _member(out, "logs/uniformity.txt")
    assert "ratio: the term's share of the step at C = 256" in uniformity
    assert "one row block's Gram, 256 x 2048" in uniformity and "_BlockedUniformity" in uniformity
    assert "pull at 256 columns" in uniformity  # padded against unpadded: one width at 256
    step = _member(out, "logs/step.txt")
    assert "ratio (ltray's GPU step / plain fp32): resnet32 ce" in step
    assert "step time of each loss over ce's" in step and "resnet32 dr: +fused SGD" in step
    assert "torchvision" in _member(out, "logs/decode.txt")
    if "prepare: skipped" in summary:
        return
    rows = [line for line in summary.splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0] for row in rows] == ["| balanced_softmax", "| dr-prior"]
    for row in rows:  # every run finished its two epochs and printed its test accuracy
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[6] == "2" and float(cells[1]) >= 0.0, row
        # where the time went, from the run's checkpoint and the process's wall clock
        assert re.fullmatch(r"[\d.]+ \([\d.]+ \+ [\d.]+ \+ -?[\d.]+\)", cells[7]), row
        assert float(cells[8]) > 0.0, row
        assert re.fullmatch(r"\d+ \(\d+ \+ -?\d+\)", cells[9]), row


def _member(out: Path, name: str) -> str:
    with tarfile.open(out / "logs.tar.gz") as logs:
        member = logs.extractfile(name)
        assert member is not None
        return member.read().decode()
