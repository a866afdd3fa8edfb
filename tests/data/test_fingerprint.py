from dataclasses import replace

from ltray.data.prepare.fingerprint import (
    MISSING,
    content_stamp,
    describe_difference,
    fingerprints,
    same_recipe,
    shard_fingerprint,
    stat_files,
)
from ltray.data.prepare.image_refs import FileRef, Item
from ltray.data.shards import ShardLayout


def _items(stamps):
    return [
        Item(f"c/{i}.jpg", i % 2, FileRef(f"/src/c/{i}.jpg"), 10, s) for i, s in enumerate(stamps)
    ]


def _parts(stamps, params=None, layout=None):
    layout = layout or ShardLayout()
    splits = {"train": _items(stamps), "test": _items(["t"])}
    return fingerprints("imagefolder", params or {"seed": 0}, ["a", "b"], splits, layout, "decode")


def test_every_part_changes_the_fingerprint_and_is_named():
    base = _parts(["1:1", "2:2", "3:3"])
    assert base == _parts(["1:1", "2:2", "3:3"])
    content = _parts(["1:1", "2:9", "3:3"])
    listed = _parts(["1:1", "2:2"])
    option = _parts(["1:1", "2:2", "3:3"], params={"seed": 1})
    layout = _parts(["1:1", "2:2", "3:3"], layout=ShardLayout(shard_rows=5))
    fps = {p["fingerprint"] for p in (base, content, listed, option, layout)}
    assert len(fps) == 5
    assert same_recipe(base, content) and same_recipe(base, listed)
    assert not same_recipe(base, option) and not same_recipe(base, layout)
    assert describe_difference(base, content).startswith("images of the train split changed")
    assert describe_difference(base, listed) == "the train split lists other images (2 now, 3 then)"
    assert describe_difference(base, option) == "options differ (seed 0 -> 1)"
    assert describe_difference(base, layout) == "options differ (layout.shard_rows 1000000 -> 5)"
    assert describe_difference({}, base) == "an older ltray wrote it, without recording how"


def test_a_shard_fingerprint_covers_only_its_own_items():
    parts = _parts(["1:1", "2:2", "3:3"])
    items = _items(["1:1", "2:2", "3:3"])
    first = shard_fingerprint(parts, "train", 0, items[:2])
    edited = [items[0], replace(items[1], stamp="2:9")]
    assert shard_fingerprint(parts, "train", 0, edited) != first
    other = _parts(["1:1", "2:2", "3:9"])  # an image of another shard changed
    assert shard_fingerprint(other, "train", 0, items[:2]) == first


def test_content_stamp_prefers_a_stored_content_hash():
    assert content_stamp({"size": 5, "mtime": 1.5}) == "5:1.5"
    s3 = {"size": 5, "ETag": '"abc"', "LastModified": "2026-01-01"}
    assert content_stamp(s3) == "5:ETag=abc"


def test_stat_files_lists_each_folder_once(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    calls = []
    original = LocalFileSystem.ls

    def counted(self, path, *args, **kwargs):
        calls.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", counted)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"12345")
    (tmp_path / "a" / "y.jpg").write_bytes(b"1")
    urls = [str(tmp_path / "a" / n) for n in ("x.jpg", "y.jpg", "gone.jpg")]
    urls.append(str(tmp_path / "nofolder" / "z.jpg"))
    stats = stat_files(urls)
    assert stats[urls[0]][1] == 5 and stats[urls[0]][0].startswith("5:")
    assert stats[urls[1]][1] == 1
    assert stats[urls[2]] == stats[urls[3]] == (MISSING, 0)
    assert len(calls) == 2  # a/ and nofolder/, not one call per file
