"""bench/bench_stream.py, bench_scaling.py and bench_rerun.py at their edges: ``--help``, and
the skip on a machine without Ray (the GPU box has none), which must exit 0 before preparing any
data; and bench/bench_epoch_start.py run small."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = ["bench_stream", "bench_scaling", "bench_rerun"]


def run_script(name: str, args: list[str], monkeypatch) -> None:
    """``python bench/NAME.py ARGS``, in this process."""
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"{name}.py"), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts bench/ first
    runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_describes_the_benchmark(name, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script(name, ["--help"], monkeypatch)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}.py")
    assert "--cache" in out


@pytest.mark.parametrize("name", SCRIPTS)
def test_without_ray_it_says_skipped_and_exits_0(name, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cache = tmp_path / "cache"
    run_script(name, ["--cache", str(cache)], monkeypatch)  # returns: exit status 0
    assert capsys.readouterr().out == f"{name}: skipped: ray is not installed\n"
    assert not cache.exists()  # nothing prepared


def test_the_epoch_start_bench_times_both_ways_and_prints_its_ratio(monkeypatch, capsys, tmp_path):
    """bench_epoch_start.py runs on CIFAR-10-LT from ../shared/data, or the small synthetic set
    it makes where that is missing."""
    monkeypatch.syspath_prepend(str(BENCH))  # as `python bench/NAME.py` puts it first
    args = ["--steps", "30", "--rounds", "1", "--step-ms", "2", "--cache", str(tmp_path)]
    run_script("bench_epoch_start", args, monkeypatch)
    out = capsys.readouterr().out
    assert "round 0 started at each epoch" in out
    assert "round 0 next epoch started ahead" in out
    assert out.splitlines()[-1].startswith("ratio (mean wait for an epoch's first batch, ahead")
