import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from data_support import split_rows

from ltray import fs
from ltray.data.manifest import read_manifest
from ltray.data.prepare import orchestrator, sources
from ltray.data.prepare.orchestrator import PrepareOptions, prepare, prepare_from
from ltray.data.prepare.out_folder import move_into_place
from ltray.data.shards import ShardLayout
from ltray.errors import LtrayError

LAYOUT = ShardLayout(shard_rows=4, row_group_rows=2)


def _prepare_tree(src, out, **kw):
    options = PrepareOptions(**{"layout": LAYOUT, "workers": 1, **kw})
    return prepare_from(lambda s: sources.imagefolder(str(src), s), str(out), options)


def test_prepare_writes_shards_manifest_and_report(small_tree, tmp_path):
    out = tmp_path / "out"
    result = _prepare_tree(small_tree, out)
    m = read_manifest(str(out))
    assert m.classes == ["ant", "bee", "cat"]
    assert m.class_counts("train") == [6, 5, 4] and m.class_counts("test") == [2, 2, 2]
    assert [s.path for s in m.shards("train")] == [f"train/part-0000{i}.parquet" for i in range(4)]
    for shard in m.shards("train"):
        path = out / shard.path
        assert path.stat().st_size == shard.bytes
        assert fs.sha256_of(str(path)) == shard.sha256
        assert pq.ParquetFile(path).metadata.num_rows == shard.rows == sum(shard.row_groups)
    rows = split_rows(out, "train")
    assert sorted(r["id"] for r in rows) == sorted(
        f"train/{c}/{i:04d}.jpg" for c, n in [("ant", 6), ("bee", 5), ("cat", 4)] for i in range(n)
    )
    for r in rows:  # the original bytes, the right label
        assert r["image"] == (small_tree / r["id"]).read_bytes()
        assert m.classes[r["label"]] == r["id"].split("/")[1]
    assert [r["id"] for r in split_rows(out, "test")][:2] == [
        "test/ant/0000.jpg",
        "test/ant/0001.jpg",
    ]
    assert m.profile["per_class"][0] == {
        "label": 0,
        "name": "ant",
        "train_count": 6,
        "group": "few",
    }
    assert json.loads((out / "prepare-report.json").read_text())["bad"] == 0
    assert sorted(os.listdir(out)) == ["manifest.json", "prepare-report.json", "test", "train"]
    assert result.written == 6 and result.reused == 0


def test_manifest_is_written_last(small_tree, tmp_path, monkeypatch):
    written = []
    original = fs.write_bytes

    def record(url, data, storage_options=None):
        written.append(os.path.basename(url))
        original(url, data, storage_options)

    monkeypatch.setattr(fs, "write_bytes", record)
    _prepare_tree(small_tree, tmp_path / "out")
    assert written[-1] == "manifest.json" and written.count("manifest.json") == 1
    assert written.index("prepare-report.json") < len(written) - 1


def test_bad_images_are_skipped_counted_and_named(small_tree, tmp_path):
    good = (small_tree / "train" / "ant" / "0000.jpg").read_bytes()
    (small_tree / "train" / "ant" / "9998.jpg").write_text("not an image at all")
    (small_tree / "train" / "bee" / "9999.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(LtrayError, match=r"2 of 23 images are bad .*prepare-report.json") as info:
        _prepare_tree(small_tree, tmp_path / "strict")
    assert info.value.report["bad"] == 2
    report = json.loads((tmp_path / "strict" / "prepare-report.json").read_text())
    assert {b["id"] for b in report["bad_items"]} == {"train/ant/9998.jpg", "train/bee/9999.jpg"}
    assert not (tmp_path / "strict" / "manifest.json").exists()
    assert not (tmp_path / "strict" / "train").exists()  # unfinished shards stay in _prepare/

    result = _prepare_tree(small_tree, tmp_path / "lenient", max_bad_fraction=0.1)
    bad = {b["id"]: b["reason"] for b in result.report["bad_items"]}
    assert "not a JPEG or PNG" in bad["train/ant/9998.jpg"]
    assert "does not decode" in bad["train/bee/9999.jpg"]
    assert read_manifest(str(tmp_path / "lenient")).class_counts("train") == [6, 5, 4]


def test_rerun_is_a_no_op_and_other_data_sets_are_refused(small_tree, tmp_path):
    out = tmp_path / "out"
    _prepare_tree(small_tree, out)
    before = (out / "manifest.json").stat().st_mtime_ns
    assert _prepare_tree(small_tree, out).already_done
    assert (out / "manifest.json").stat().st_mtime_ns == before
    other = PrepareOptions(layout=LAYOUT, workers=1)
    with pytest.raises(LtrayError, match="already holds a different data set.*--overwrite"):
        prepare_from(
            lambda s: sources.imagefolder(str(small_tree), s, imbalance=3), str(out), other
        )
    replaced = PrepareOptions(layout=LAYOUT, workers=1, overwrite=True)
    prepare_from(lambda s: sources.imagefolder(str(small_tree), s, imbalance=3), str(out), replaced)
    assert read_manifest(str(out)).class_counts("train") == [6, 3, 2]
    assert not (out / "train" / "part-00003.parquet").exists()  # the old layout is gone


def test_unrelated_non_empty_out_is_refused(small_tree, tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(LtrayError, match="not empty and holds no ltray data set"):
        _prepare_tree(small_tree, out)
    _prepare_tree(small_tree, out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"  # --overwrite replaces only our files


class Killed(BaseException):
    """A prepare killed at a chosen step (BaseException: nothing in the prepare catches it)."""


def _killed_at(step, monkeypatch, src, out, after=None, **kw):
    """Run a prepare of ``src`` that dies when the orchestrator calls ``step`` (optionally
    after running ``after`` on that call's arguments), as a killed process would."""

    def die(*args, **kwargs):
        if after is not None:
            after(*args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(orchestrator, step, die)
        with pytest.raises(Killed):
            _prepare_tree(src, out, **kw)


def _shard_stamps(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob("*/part-*.parquet")}


def test_interrupted_prepare_resumes_without_redoing_finished_shards(
    small_tree, tmp_path, monkeypatch
):
    reference = _prepare_tree(small_tree, tmp_path / "reference").manifest
    out = tmp_path / "out"
    _killed_at("move_into_place", monkeypatch, small_tree, out)
    work = out / "_prepare"
    assert not (out / "train").exists()  # shards stay in the work folder until all are done
    (work / "train" / "part-00002.parquet").unlink()  # and one is lost
    stamps = _shard_stamps(work)
    assert len(stamps) == 5
    with pytest.raises(LtrayError, match="half-written"):
        read_manifest(str(out))
    resumed = _prepare_tree(small_tree, out)
    assert resumed.reused == 5 and resumed.written == 1
    assert {k: v for k, v in _shard_stamps(out).items() if k in stamps} == stamps  # moved as is
    assert resumed.manifest.to_json() == reference.to_json()
    assert not (out / "_prepare").exists()


def test_a_prepare_killed_while_moving_shards_into_place_resumes(small_tree, tmp_path, monkeypatch):
    reference = _prepare_tree(small_tree, tmp_path / "reference").manifest
    out = tmp_path / "out"

    def move_two(out_url, paths, opts):
        move_into_place(out_url, paths[:2], opts)

    _killed_at("move_into_place", monkeypatch, small_tree, out, after=move_two)
    assert len(_shard_stamps(out)) == 2 and len(_shard_stamps(out / "_prepare")) == 4
    resumed = _prepare_tree(small_tree, out)
    assert resumed.reused == 6 and resumed.written == 0
    assert resumed.manifest.to_json() == reference.to_json()
    for shard in resumed.manifest.shards("train") + resumed.manifest.shards("test"):
        assert fs.sha256_of(str(out / shard.path)) == shard.sha256


def test_a_shard_that_no_longer_matches_its_marker_is_redone(small_tree, tmp_path, monkeypatch):
    reference = _prepare_tree(small_tree, tmp_path / "reference").manifest
    out = tmp_path / "out"
    _killed_at("move_into_place", monkeypatch, small_tree, out)
    shard = out / "_prepare" / "train" / "part-00001.parquet"
    blob = bytearray(shard.read_bytes())
    blob[100] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(blob))
    resumed = _prepare_tree(small_tree, out)
    assert resumed.reused == 5 and resumed.written == 1
    assert resumed.manifest.to_json() == reference.to_json()


def test_a_different_unfinished_prepare_is_refused_saying_what_differs(
    small_tree, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    _killed_at(
        "move_into_place",
        monkeypatch,
        small_tree,
        out,
        layout=ShardLayout(shard_rows=5, row_group_rows=2),
    )
    with pytest.raises(
        LtrayError,
        match=r"holds an unfinished prepare of a different data set: options differ "
        r"\(layout.shard_rows 5 -> 4\); pass --overwrite to replace it",
    ):
        _prepare_tree(small_tree, out)
    assert _prepare_tree(small_tree, out, overwrite=True).reused == 0
    fs.write_bytes(str(tmp_path / "old" / "_prepare" / "plan.json"), b'{"fingerprint": "x"}')
    with pytest.raises(
        LtrayError, match="unfinished prepare of a different data set: an older ltray.*--overwrite"
    ):
        _prepare_tree(small_tree, tmp_path / "old")


def test_memory_url_round_trip(make_synthetic_plan):
    from ltray.data.stream import StreamingImageDataset, make_loader

    url = "memory://ltray-tests/synthetic"
    try:
        result = prepare(make_synthetic_plan(), url, PrepareOptions(layout=LAYOUT, workers=4))
        assert result.manifest.num_rows("train") == 303
        ds = StreamingImageDataset(url, "train", batch_size=50)
        for workers in (0, 2):
            index = [i for b in make_loader(ds, num_workers=workers) for i in b["index"].tolist()]
            assert sorted(index) == list(range(303))
    finally:
        fs.remove(url, recursive=True)


@pytest.mark.slow
def test_parallel_prepare_matches_serial(make_synthetic_plan, tmp_path):
    layout = ShardLayout(shard_rows=60, row_group_rows=16)
    serial = prepare(
        make_synthetic_plan(), str(tmp_path / "a"), PrepareOptions(layout=layout, workers=1)
    )
    parallel = prepare(
        make_synthetic_plan(), str(tmp_path / "b"), PrepareOptions(layout=layout, workers=2)
    )
    assert serial.manifest.to_json() == parallel.manifest.to_json()
    assert len(parallel.manifest.shards("train")) == 6


KILLABLE = """
import sys
from ltray.data.prepare import sources
from ltray.data.prepare.orchestrator import PrepareOptions, prepare
from ltray.data.shards import ShardLayout
plan = sources.synthetic(classes=10, n_max=600, imbalance=2, image_size=48, test_per_class=0)
prepare(plan, sys.argv[1], PrepareOptions(layout=ShardLayout(shard_rows=150), workers=1))
"""


@pytest.mark.slow
def test_killed_prepare_subprocess_resumes(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(out)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    markers = out / "_prepare"
    while time.time() < deadline and len(list(markers.glob("train-*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (markers / "train").glob("*.parquet")}
    assert not (out / "manifest.json").exists() and len(done) >= 3
    assert not (out / "train").exists()  # readers never see an unfinished shard
    plan = sources.synthetic(classes=10, n_max=600, imbalance=2, image_size=48, test_per_class=0)
    result = prepare(plan, str(out), PrepareOptions(layout=ShardLayout(shard_rows=150), workers=1))
    assert result.reused >= 3 and result.reused + result.written == len(
        result.manifest.shards("train")
    )
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.parquet")}
    assert sum(kept[name] == stamp for name, stamp in done.items()) >= result.reused
    assert result.manifest.num_rows("train") == len(plan.splits["train"]) == 4343


def test_file_url_round_trip(small_tree, tmp_path):
    from ltray.data.stream import StreamingImageDataset, make_loader

    url = f"file://{tmp_path}/viaurl"
    _prepare_tree(small_tree, url)
    assert (tmp_path / "viaurl" / "manifest.json").is_file()
    ds = StreamingImageDataset(url, "test", batch_size=4, shuffle=False)
    assert [i for b in make_loader(ds, num_workers=0) for i in b["index"].tolist()] == list(
        range(6)
    )


def test_a_tar_gz_source_is_the_same_data_set_on_every_run(small_tree, tmp_path):
    import tarfile

    archive = tmp_path / "src.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(small_tree, arcname="wrapper")
    out = tmp_path / "out"
    assert not _prepare_tree(archive, out).already_done
    # decompressed into a new scratch folder each run: the member stamps, not paths, count
    assert _prepare_tree(archive, out).already_done


def test_a_resumed_prepare_with_fewer_images_leaves_no_stray_shard(
    small_tree, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    _killed_at("write_manifest", monkeypatch, small_tree, out)  # every shard moved into place
    assert len(list((out / "train").glob("part-*.parquet"))) == 4
    for name in ("0003.jpg", "0004.jpg", "0005.jpg"):
        (small_tree / "train" / "ant" / name).unlink()  # 12 train images: 3 shards of 4
    resumed = _prepare_tree(small_tree, out)
    assert [s.path for s in resumed.manifest.shards("train")] == [
        f"train/part-0000{i}.parquet" for i in range(3)
    ]
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        f"part-0000{i}.parquet" for i in range(3)
    ]
    assert resumed.manifest.class_counts("train") == [3, 5, 4]
