"""Helpers for the data tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from ltray.cli.prepare import app as prepare_app
from ltray.data import read_manifest


def split_rows(out, split: str) -> list[dict]:
    """Every row of ``split`` of the data set in ``out``, shard by shard, as dicts."""
    rows = []
    for shard in read_manifest(str(out)).shards(split):
        rows += pq.read_table(Path(out) / shard.path).to_pylist()
    return rows


def run_prepare(*args):
    """``ltray prepare ARGS`` (arguments as strings), its result."""
    return CliRunner().invoke(prepare_app, [str(a) for a in args])


def error_line(result) -> str:
    """The one ``error: ...`` line of a command that failed on bad input (exit status 1)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
