import json

import pytest

from ltray.data.manifest import Manifest, ShardInfo, SplitInfo, read_manifest, write_manifest
from ltray.errors import LtrayError


def _manifest() -> Manifest:
    shard = ShardInfo("train/part-00000.parquet", 131, 1000, "ab" * 32, (100, 31))
    test = ShardInfo("test/part-00000.parquet", 6, 90, "cd" * 32, (6,))
    return Manifest(
        classes=["a", "b", "c"],
        splits={"train": SplitInfo([110, 20, 1], [shard]), "test": SplitInfo([2, 2, 2], [test])},
        profile={"name": "exp", "imbalance": 110.0, "n_max": 110, "seed": 0},
        source={"kind": "synthetic"},
        fingerprint="f" * 64,
    )


def test_round_trip_and_queries(tmp_path):
    write_manifest(_manifest(), str(tmp_path))
    m = read_manifest(str(tmp_path))
    assert m.classes == ["a", "b", "c"] and m.num_classes == 3
    assert m.class_counts("train") == [110, 20, 1]
    assert m.num_rows("train") == 131 and m.num_rows("test") == 6
    assert m.has_split("test") and not m.has_split("val")
    assert m.groups() == ["many", "medium", "few"]
    assert m.groups(many=10, few=5) == ["many", "many", "few"]
    assert m.shards("train")[0].row_groups == (100, 31)
    assert m.fingerprint == "f" * 64 and m.url == str(tmp_path)
    with pytest.raises(LtrayError, match="no split 'val'.*train, test"):
        m.class_counts("val")


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(LtrayError, match="does not exist"):
        read_manifest(str(tmp_path / "nope"))
    with pytest.raises(LtrayError, match="empty"):
        read_manifest(str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "part-00000.parquet").write_bytes(b"x")
    with pytest.raises(LtrayError, match="half-written"):
        read_manifest(str(tmp_path))


def test_bad_manifests_name_the_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(LtrayError, match="manifest.json: not valid JSON"):
        read_manifest(str(tmp_path))
    data = _manifest().to_json()
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(LtrayError, match="version 99"):
        read_manifest(str(tmp_path))
    data = _manifest().to_json()
    data["splits"]["train"]["class_counts"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(LtrayError, match="do not sum"):
        read_manifest(str(tmp_path))
