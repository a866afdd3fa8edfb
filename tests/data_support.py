"""Helpers for the data tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from ltray.data import read_manifest


def split_rows(out, split: str) -> list[dict]:
    """Every row of ``split`` of the data set in ``out``, shard by shard, as dicts."""
    rows = []
    for shard in read_manifest(str(out)).shards(split):
        rows += pq.read_table(Path(out) / shard.path).to_pylist()
    return rows
