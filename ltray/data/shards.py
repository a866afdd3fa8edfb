"""Shards: how a split's rows are cut into Parquet files and row groups, and how one is written.

Columns: ``image`` (binary: the source's encoded bytes, re-encoded only where ``ltray prepare
--resize-shorter`` shrank them), ``label`` (int32), ``id`` (string: source path or key). Images
are stored uncompressed (JPEG/PNG do not compress); row groups are the reader's unit of
streaming and shuffling, so they are cut by a byte target (tens of MB) and a row cap (so small
images still give many units).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [("image", pa.binary()), ("label", pa.int32()), ("id", pa.string())],
    metadata={"ltray.format": "ltray-dataset/1"},
)


@dataclass(frozen=True)
class ShardLayout:
    """Size limits: a shard or row group closes when either limit is reached."""

    shard_rows: int = 1_000_000
    shard_bytes: int = 128 << 20
    row_group_rows: int = 1024
    row_group_bytes: int = 32 << 20


def cut_by_size(sizes: Sequence[int], max_rows: int, max_bytes: int) -> list[int]:
    """Greedy cut of consecutive rows into pieces: returns rows per piece (sum = len(sizes)).

    A piece closes before a row that would take it past max_bytes (a piece always holds at
    least one row) or once it holds max_rows rows.
    """
    if max_rows < 1 or max_bytes < 1:
        raise ValueError("max_rows and max_bytes must be positive")
    pieces: list[int] = []
    rows = nbytes = 0
    for size in sizes:
        if rows and (rows >= max_rows or nbytes + size > max_bytes):
            pieces.append(rows)
            rows = nbytes = 0
        rows += 1
        nbytes += size
    if rows:
        pieces.append(rows)
    return pieces


def shard_path(split: str, index: int) -> str:
    """Path of a shard relative to the data set root."""
    return f"{split}/part-{index:05d}.parquet"


def encode_shard(
    images: Sequence[bytes], labels: Sequence[int], ids: Sequence[str], layout: ShardLayout
) -> tuple[bytes, list[int]]:
    """Parquet bytes of one shard and its rows per row group."""
    groups = cut_by_size([len(b) for b in images], layout.row_group_rows, layout.row_group_bytes)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink,
        SCHEMA,
        compression={"image": "NONE", "label": "ZSTD", "id": "ZSTD"},
        use_dictionary=["label"],
        write_statistics=["label"],
    ) as writer:
        start = 0
        for rows in groups:
            stop = start + rows
            table = pa.table(
                {
                    "image": pa.array(images[start:stop], type=pa.binary()),
                    "label": pa.array(labels[start:stop], type=pa.int32()),
                    "id": pa.array(ids[start:stop], type=pa.string()),
                },
                schema=SCHEMA,
            )
            writer.write_table(table, row_group_size=rows)
            start = stop
    return sink.getvalue().to_pybytes(), groups


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
