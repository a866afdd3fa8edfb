import json

import pytest
from typer.testing import CliRunner

from ltray.cli.prepare import app
from ltray.data import read_manifest

COMMANDS = ["cifar-lt", "imagefolder", "imagenet-lt", "inat18", "synthetic"]
FAST = ["--test-per-class", "5", "--n-max", "40", "--imbalance", "10"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


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
