import os

import pytest

from ltray import fs
from ltray.errors import LtrayError

OPTS = {
    "key": "AKIAEXAMPLEKEY",
    "secret": "s3cr3t-value",
    "client_kwargs": {"endpoint_url": "http://h:1"},
}


def test_join_url():
    assert (
        fs.join_url("s3://b/root/", "train", "/part-0.parquet")
        == "s3://b/root/train/part-0.parquet"
    )
    assert fs.join_url("/tmp/x", "a") == "/tmp/x/a"


def test_write_bytes_is_atomic_locally(tmp_path):
    target = tmp_path / "sub" / "f.json"
    fs.write_bytes(str(target), b"one")
    fs.write_bytes(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.json"]  # no temporary left behind


def test_memory_round_trip_and_listing():
    url = "memory://ltray-test-fs/dir"
    fs.write_bytes(url + "/a.bin", b"abc")
    assert fs.read_bytes(url + "/a.bin") == b"abc"
    assert fs.file_size(url + "/a.bin") == 3
    assert fs.list_names(url) == ["a.bin"]
    assert (
        fs.sha256_of(url + "/a.bin")
        == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    fs.remove(url, recursive=True)
    assert not fs.exists(url + "/a.bin")
    assert fs.is_process_local(url) and not fs.is_process_local("/tmp")


def test_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(LtrayError, match=r"missing\.bin: not found"):
        fs.read_bytes(str(tmp_path / "missing.bin"))
    with pytest.raises(LtrayError, match="zzz"):
        fs.get_fs("zzz://bucket/x")


def test_range_file_reads_exact_ranges_and_serves_parquet():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": list(range(1000)), "s": [str(i) for i in range(1000)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=100)
    data = buffer.getvalue()
    fs.write_bytes("memory://ltray-range/t.parquet", data)
    ranged = fs.RangeFile("memory://ltray-range/t.parquet", len(data))
    assert ranged.seek(-10, io.SEEK_END) == len(data) - 10
    assert ranged.read(100) == data[-10:] and ranged.read() == b""
    ranged.seek(5)
    assert ranged.read(7) == data[5:12] and ranged.tell() == 12
    assert pq.ParquetFile(ranged).read_row_group(3).equals(table.slice(300, 100))
    with pytest.raises(LtrayError, match="memory://ltray-range/gone.parquet: not found"):
        fs.RangeFile("memory://ltray-range/gone.parquet", 10).read(5)
