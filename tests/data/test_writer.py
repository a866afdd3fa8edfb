import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltray.data.shards import ShardLayout, cut_by_size, encode_shard, shard_path


def test_cut_by_size_rows_and_bytes():
    assert cut_by_size([1] * 10, max_rows=4, max_bytes=100) == [4, 4, 2]
    assert cut_by_size([40, 40, 40, 40], max_rows=10, max_bytes=100) == [2, 2]
    assert cut_by_size([500, 1, 1], max_rows=10, max_bytes=100) == [1, 2]  # a big row alone
    assert cut_by_size([], max_rows=1, max_bytes=1) == []
    with pytest.raises(ValueError):
        cut_by_size([1], max_rows=0, max_bytes=1)


def test_encode_shard_keeps_bytes_and_row_groups():
    images = [bytes([i]) * (50 + i) for i in range(40)]
    labels = [i % 3 for i in range(40)]
    ids = [f"src/{i}.jpg" for i in range(40)]
    blob, groups = encode_shard(images, labels, ids, ShardLayout(row_group_rows=16))
    assert groups == [16, 16, 8]
    parquet = pq.ParquetFile(io.BytesIO(blob))
    assert [parquet.metadata.row_group(i).num_rows for i in range(3)] == groups
    table = parquet.read()
    assert table.schema.field("image").type == pa.binary()
    assert table.schema.field("label").type == pa.int32()
    assert table.schema.field("id").type == pa.string()
    assert table.column("image").to_pylist() == images
    assert table.column("label").to_pylist() == labels
    assert table.column("id").to_pylist() == ids


def test_encode_empty_shard():
    blob, groups = encode_shard([], [], [], ShardLayout())
    assert groups == [] and pq.ParquetFile(io.BytesIO(blob)).metadata.num_rows == 0


def test_shard_path():
    assert shard_path("train", 3) == "train/part-00003.parquet"
