import json

import pytest
from data_support import error_line as _error_line
from data_support import run_prepare as run

from ltray.data import read_manifest

COMMANDS = ["cifar-lt", "imagefolder", "imagenet-lt", "inat18", "synthetic"]
FAST = ["--test-per-class", "5", "--n-max", "40", "--imbalance", "10"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "--overwrite" in result.output and "--storage-options" in result.output


def test_synthetic_prepare_rerun_and_refusal(tmp_path):
    out = tmp_path / "synth"
    result = run("synthetic", out, *FAST, "--shard-rows", "50")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: train 159 rows in 4 shard(s), test 50 rows in 1 shard(s)" in result.stdout
    assert "10 classes (0 many, 3 medium, 7 few); profile exp" in result.stdout
    m = read_manifest(str(out))
    assert m.profile["n_max"] == 40 and m.profile["imbalance"] == 10.0
    assert run("synthetic", out, *FAST, "--shard-rows", "50").stdout.endswith("nothing to do\n")
    line = _error_line(run("synthetic", out, *FAST, "--shard-rows", "50", "--seed", "1"))
    assert "already holds a different data set: options differ (seed 0 -> 1)" in line
    assert line.endswith("pass --overwrite to replace it")
    assert run("synthetic", out, *FAST, "--seed", "1", "--overwrite").exit_code == 0


def test_bad_input_is_one_error_line(tmp_path, make_tree):
    assert "not found" in _error_line(run("imagefolder", tmp_path / "nope", tmp_path / "out"))
    src = make_tree(tmp_path / "src", {"": {"a": 2, "b": 2}})
    (src / "c").mkdir()
    assert "class folder c/ is empty" in _error_line(run("imagefolder", src, tmp_path / "o2"))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ImageNet_LT_train.txt").write_text("a/0000.jpg 0\nb/0000.jpg one\n")
    line = _error_line(run("imagenet-lt", "--images", src, "--lists", lists, tmp_path / "o3"))
    assert "ImageNet_LT_train.txt line 2" in line
    assert (
        "--max-bad-fraction" in run("synthetic", tmp_path / "o4", "--max-bad-fraction", "2").output
    )


def test_bad_images_are_reported_and_too_many_fail(tmp_path, make_tree):
    src = make_tree(tmp_path / "src", {"": {"a": 5, "b": 5}})
    (src / "a" / "0003.jpg").write_bytes(b"GIF89a not for us")
    result = run("imagefolder", src, tmp_path / "ok", "--max-bad-fraction", "0.2")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad image(s) of 10" in result.stdout
    assert "train: a/0003.jpg: not a JPEG or PNG file" in result.stdout
    failed = run("imagefolder", src, tmp_path / "strict")
    assert "1 of 10 images are bad" in _error_line(failed)
    assert "a/0003.jpg" in failed.stdout
    report = json.loads((tmp_path / "strict" / "prepare-report.json").read_text())
    assert report["bad_items"] == [
        {"split": "train", "id": "a/0003.jpg", "reason": "not a JPEG or PNG file"}
    ]


def test_storage_options_errors_never_echo_them(tmp_path):
    secret = "sup3r-s3cret-value"
    line = _error_line(
        run("synthetic", tmp_path / "o", "--storage-options", '{"secret": "' + secret)
    )
    assert "not valid JSON" in line and secret not in line
    line = _error_line(run("synthetic", tmp_path / "o", "--storage-options", "[1, 2]"))
    assert "expected a JSON object" in line
    opts = tmp_path / "opts.json"
    opts.write_text(json.dumps({"auto_mkdir": True}))
    result = run("synthetic", tmp_path / "o", *FAST, "--storage-options", f"@{opts}")
    assert result.exit_code == 0, result.output


# --- re-runs after the source changed (issue 13, item 6) ---------------------------------------


def _train_ids(out):
    import pyarrow.parquet as pq

    m = read_manifest(str(out))
    return {
        i for s in m.shards("train") for i in pq.read_table(out / s.path).column("id").to_pylist()
    }


def test_rerun_after_replacing_a_bad_image_that_failed_the_prepare_includes_it(
    tmp_path, make_tree, make_image
):
    src = make_tree(tmp_path / "src", {"": {"a": 6, "b": 6}})
    (src / "a" / "0003.jpg").write_bytes(b"truncated download")
    out = tmp_path / "out"
    assert "1 of 12 images are bad" in _error_line(
        run("imagefolder", src, out, "--shard-rows", "4")
    )
    assert not list(out.glob("train/*.parquet"))  # nothing unfinished where readers look
    done = len(list(out.glob("_prepare/train-part-*.json")))  # it stops at the limit
    assert 2 <= done <= 3  # the seeded write order puts the bad image in a later shard
    fixed = make_image(1234)
    (src / "a" / "0003.jpg").write_bytes(fixed)
    result = run("imagefolder", src, out, "--shard-rows", "4")
    assert result.exit_code == 0, result.output
    kept = done - 1  # every finished shard but the one holding the fixed image
    assert f"resumed: kept {kept} finished shard(s), wrote {3 - kept}" in result.stdout
    assert "a/0003.jpg" in _train_ids(out)
    assert read_manifest(str(out)).class_counts("train") == [6, 6]


def test_rerun_after_deleting_the_bad_images_completes(tmp_path, make_tree):
    src = make_tree(tmp_path / "src", {"": {"a": 6, "b": 6}})
    (src / "b" / "0001.jpg").write_bytes(b"GIF89a")
    out = tmp_path / "out"
    assert "1 of 12 images are bad" in _error_line(run("imagefolder", src, out))
    (src / "b" / "0001.jpg").unlink()
    result = run("imagefolder", src, out)
    assert result.exit_code == 0, result.output
    assert read_manifest(str(out)).class_counts("train") == [6, 5]


def test_a_finished_data_set_whose_images_changed_is_not_served_stale(
    tmp_path, make_tree, make_image
):
    src = make_tree(tmp_path / "src", {"": {"a": 5, "b": 5}})
    (src / "a" / "0003.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    first = run("imagefolder", src, out, "--max-bad-fraction", "0.2")
    assert first.exit_code == 0 and "skipped 1 bad image(s)" in first.stdout
    (src / "a" / "0003.jpg").write_bytes(make_image(77))  # the bad image, fixed
    line = _error_line(run("imagefolder", src, out, "--max-bad-fraction", "0.2"))
    assert "already holds a different data set: images of the train split changed" in line
    assert line.endswith("pass --overwrite to replace it")
    result = run("imagefolder", src, out, "--max-bad-fraction", "0.2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "a/0003.jpg" in _train_ids(out) and "skipped" not in result.stdout
    # an edited good image (same name, other bytes) is noticed too
    (src / "b" / "0000.jpg").write_bytes(make_image(78, size=20))
    assert "images of the train split changed" in _error_line(run("imagefolder", src, out))
    # and a removed one: the message says how the list differs
    (src / "b" / "0001.jpg").unlink()
    line = _error_line(run("imagefolder", src, out, "--max-bad-fraction", "0.2"))
    assert "the train split lists other images (9 now, 10 then)" in line


def test_a_manifest_from_before_content_fingerprints_reads_and_counts_as_done(tmp_path, make_tree):
    from ltray.data.prepare import sources
    from ltray.data.prepare.fingerprint import legacy_fingerprint
    from ltray.data.prepare.orchestrator import write_order
    from ltray.data.shards import ShardLayout

    src = make_tree(tmp_path / "src", {"": {"a": 4, "b": 3}})
    out = tmp_path / "out"
    assert run("imagefolder", src, out).exit_code == 0
    # rewrite the manifest as ltray wrote it before: no fingerprints, no warnings, the old
    # fingerprint over (id, label) only
    plan = sources.imagefolder(str(src), str(tmp_path / "scratch"))
    splits = {s: write_order(items, s, 0) for s, items in plan.splits.items()}
    old_fp = legacy_fingerprint(
        plan.kind, plan.params, plan.classes, splits, ShardLayout(), "decode"
    )
    data = json.loads((out / "manifest.json").read_text())
    del data["fingerprints"], data["warnings"]
    data["fingerprint"] = old_fp
    (out / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(str(out)).class_counts("train") == [4, 3]
    again = run("imagefolder", src, out)
    assert again.exit_code == 0, again.output
    assert "already holds this data set (manifest.json); nothing to do" in again.stdout
    assert "an older ltray prepared it without fingerprinting image contents" in again.stdout
    data["fingerprint"] = "0" * 64  # an old data set of other images
    (out / "manifest.json").write_text(json.dumps(data))
    line = _error_line(run("imagefolder", src, out))
    assert "already holds a different data set: an older ltray wrote it" in line
    assert "--overwrite" in line


# --- inputs that used to pass silently (issue 13, item 7) --------------------------------------


def test_an_imbalance_the_source_cannot_meet_is_refused_with_what_it_can(tmp_path, make_tree):
    src = make_tree(tmp_path / "src", {"": {"a": 10, "b": 10, "c": 2}})
    for requested in ("1", "2"):
        line = _error_line(
            run("imagefolder", src, tmp_path / f"o{requested}", "--imbalance", requested)
        )
        assert f"--imbalance {requested} (exp profile, n_max 10) needs" in line
        assert "class 'c' (label 2), which has 2" in line
        assert "already more imbalanced than that (IF 5)" in line
        assert "the smallest --imbalance this source meets is 3.34 (10 / 2 = 5" in line
        assert not (tmp_path / f"o{requested}").exists()
    result = run("imagefolder", src, tmp_path / "ok", "--imbalance", "3.34")
    assert result.exit_code == 0, result.output
    assert "imbalance 5 (requested 3.34; counts are whole images)" in result.stdout
    m = read_manifest(str(tmp_path / "ok"))
    assert m.class_counts("train") == [10, 5, 2]
    assert (m.profile["imbalance_requested"], m.profile["imbalance_actual"]) == (3.34, 5.0)
    # an IF larger than the head class allows would leave a class empty: refused too
    line = _error_line(run("synthetic", tmp_path / "s", "--n-max", "40", "--imbalance", "100"))
    assert "--imbalance 100 needs at least 100 images in the largest class, which has 40" in line


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0.5"])
def test_a_non_finite_or_small_imbalance_is_one_error_line(tmp_path, make_tree, value):
    src = make_tree(tmp_path / "src", {"": {"a": 3, "b": 3}})
    for command in (["imagefolder", src], ["cifar-lt", src], ["synthetic"]):
        line = _error_line(run(*command, tmp_path / "out", "--imbalance", value))
        assert line.endswith(
            f"must be a finite number >= 1 (largest class / smallest), got {value}"
        )
    assert not (tmp_path / "out").exists()


def test_manifest_is_strict_json(tmp_path):
    out = tmp_path / "synth"
    assert run("synthetic", out, *FAST).exit_code == 0

    def refuse(constant):
        raise AssertionError(f"{constant} in manifest.json is not JSON")

    data = json.loads((out / "manifest.json").read_text(), parse_constant=refuse)
    assert data["profile"]["imbalance_requested"] == 10.0


def test_out_inside_src_is_refused(tmp_path, make_tree):
    src = make_tree(tmp_path / "src", {"": {"a": 3, "b": 3}})
    for out in (src / "prepared", src, src / "a" / ".." / "lt"):
        line = _error_line(run("imagefolder", src, out))
        assert "is inside the source" in line and "choose an OUT outside SRC" in line
    assert sorted(p.name for p in src.iterdir()) == ["a", "b"]
    assert run("imagefolder", src, tmp_path / "beside").exit_code == 0


def test_out_that_is_a_file_is_refused_without_suggesting_overwrite(tmp_path, make_tree):
    src = make_tree(tmp_path / "src", {"": {"a": 3, "b": 3}})
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        line = _error_line(run("imagefolder", src, target, *extra))
        assert line.endswith(
            "notes.txt is a file, not a folder: choose a new or empty folder for the data set"
        )
    assert target.read_text() == "keep me"


# --- small ones (issue 13, item 8) -------------------------------------------------------------


def test_profile_counts_only_written_images_and_warns_when_bad_ones_bend_it(tmp_path, make_tree):
    src = make_tree(tmp_path / "src", {"": {"a": 6, "b": 6, "c": 6}})
    (src / "a" / "0000.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = run("imagefolder", src, out, "--imbalance", "3", "--max-bad-fraction", "0.1")
    assert result.exit_code == 0, result.output
    m = read_manifest(str(out))
    assert m.class_counts("train") == [5, 3, 2]  # planned [6, 3, 2]; a/0000.jpg is bad
    assert (m.profile["n_max"], m.profile["n_max_requested"]) == (5, 6)
    assert m.profile["imbalance_requested"] == 3.0 and m.profile["imbalance_actual"] == 2.5
    warning = (
        "bad images left 1 class(es) short of the planned train counts ('a' 5 of 6): "
        "imbalance 2.5 instead of 3"
    )
    assert m.warnings == [warning]
    assert f"warning: {warning} (recorded in manifest.json)" in result.stdout
    assert "n_max 5, imbalance 2.5 (requested 3)," in result.stdout


def test_imagenet_lt_end_to_end_names_classes_and_reports_missing_images(tmp_path, make_tree):
    wnids = ["n01440764", "n01443537"]
    images = make_tree(tmp_path / "imgs", {"train": {wnids[0]: 3, wnids[1]: 2}})
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [
        f"train/{w}/{i:04d}.jpg {c}"
        for c, (w, n) in enumerate(zip(wnids, (3, 2), strict=True))
        for i in range(n)
    ]
    rows.append(f"train/{wnids[1]}/0009.jpg 1")  # listed, never downloaded
    (lists / "ImageNet_LT_train.txt").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = run(
        "imagenet-lt", "--images", images, "--lists", lists, out, "--max-bad-fraction", "0.2"
    )
    assert result.exit_code == 0, result.output
    assert f"train: train/{wnids[1]}/0009.jpg: unreadable:" in result.stdout
    assert read_manifest(str(out)).classes == wnids
