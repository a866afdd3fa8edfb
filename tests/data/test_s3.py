"""s3:// against a real S3-compatible HTTP server (moto's) on 127.0.0.1, credentials passed only
through fsspec storage_options; they must never reach the manifest, a message or the CLI output."""

import json

import pytest
from typer.testing import CliRunner

from ltray import fs
from ltray.cli.prepare import app
from ltray.data import read_manifest
from ltray.data.stream import StreamingImageDataset, make_loader
from ltray.errors import LtrayError

BUCKET = "ltray-test"


@pytest.fixture(scope="module", autouse=True)
def bucket(s3_options):
    from ltray import fs as ltray_fs

    filesystem, _ = ltray_fs.get_fs(f"s3://{BUCKET}", s3_options)
    if not filesystem.exists(BUCKET):
        filesystem.mkdir(BUCKET)


SECRETS: list[str] = []


@pytest.fixture(autouse=True)
def _remember_secrets(s3_options):
    SECRETS[:] = [s3_options["key"], s3_options["secret"]]


def _no_secrets(text):
    assert not any(secret in text for secret in SECRETS)


def test_prepare_to_s3_and_stream_back(s3_options, tmp_path, make_tree):
    src = make_tree(tmp_path / "src", {"train": {"a": 7, "b": 5}, "test": {"a": 2, "b": 2}})
    filesystem, _ = fs.get_fs(f"s3://{BUCKET}", s3_options)
    filesystem.put(str(src), f"{BUCKET}/src", recursive=True)  # SRC on S3 too
    out = f"s3://{BUCKET}/datasets/small"
    args = ["imagefolder", f"s3://{BUCKET}/src", out, "--shard-rows", "5", "--row-group-rows", "2"]
    result = CliRunner().invoke(app, [*args, "--storage-options", json.dumps(s3_options)])
    assert result.exit_code == 0, result.output
    _no_secrets(result.stdout + result.stderr)
    assert "train 12 rows in 3 shard(s)" in result.stdout

    raw = fs.read_bytes(f"{out}/manifest.json", s3_options).decode()
    _no_secrets(raw)
    m = read_manifest(out, s3_options)
    assert m.class_counts("train") == [7, 5] and m.num_rows("test") == 4
    for workers in (0, 2):
        ds = StreamingImageDataset(
            out, "train", batch_size=4, storage_options=s3_options, verify_sha256=True
        )
        batches = list(make_loader(ds, num_workers=workers))
        assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(12))
        assert batches[0]["image"].shape == (4, 3, 12, 12)

    again = CliRunner().invoke(app, [*args, "--storage-options", json.dumps(s3_options)])
    assert again.exit_code == 0 and "nothing to do" in again.stdout


def test_s3_errors_carry_no_credentials(s3_options, tmp_path):
    with pytest.raises(LtrayError) as info:
        read_manifest(f"s3://{BUCKET}/no/such/dataset", s3_options)
    assert "does not exist" in str(info.value)
    _no_secrets(str(info.value))
    url = f"s3://{s3_options['key']}:{s3_options['secret']}@{BUCKET}/nowhere"
    with pytest.raises(LtrayError) as info:
        read_manifest(url, s3_options)
    _no_secrets(str(info.value))
    bad = dict(s3_options, secret=s3_options["secret"] + "-wrong")
    result = CliRunner().invoke(
        app,
        [
            "imagefolder",
            f"s3://{BUCKET}/src-missing",
            f"s3://{BUCKET}/x",
            "--storage-options",
            json.dumps(bad),
        ],
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    _no_secrets(result.stdout + result.stderr)


def test_truncated_shard_on_s3_is_named(s3_options, make_synthetic_plan):
    from ltray.data.prepare.orchestrator import PrepareOptions, prepare

    out = f"s3://{BUCKET}/datasets/synth"
    prepare(make_synthetic_plan(), out, PrepareOptions(storage_options=s3_options, workers=1))
    shard = f"{out}/train/part-00000.parquet"
    fs.write_bytes(shard, fs.read_bytes(shard, s3_options)[:-10], s3_options)
    ds = StreamingImageDataset(out, "train", batch_size=8, storage_options=s3_options)
    with pytest.raises(LtrayError, match=r"shard train/part-00000.parquet: .*\(truncated"):
        list(make_loader(ds, num_workers=2))


def test_an_image_replaced_on_s3_is_noticed_and_out_inside_src_refused(
    s3_options, tmp_path, make_tree, make_image
):
    src = make_tree(tmp_path / "src", {"": {"a": 3, "b": 3}})
    filesystem, _ = fs.get_fs(f"s3://{BUCKET}", s3_options)
    filesystem.put(str(src), f"{BUCKET}/src2", recursive=True)
    opts = ["--storage-options", json.dumps(s3_options)]
    out = f"s3://{BUCKET}/datasets/replaced"
    args = ["imagefolder", f"s3://{BUCKET}/src2", out, *opts]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert not filesystem.exists(f"{BUCKET}/datasets/replaced/_prepare")  # shards moved, work gone
    filesystem.pipe_file(f"{BUCKET}/src2/a/0001.jpg", make_image(4321))  # same key, new bytes
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1
    assert "images of the train split changed" in refused.stderr and "--overwrite" in refused.stderr
    inside = ["imagefolder", f"s3://{BUCKET}/src2", f"s3://{BUCKET}/src2/lt", *opts]
    result = CliRunner().invoke(app, inside)
    assert result.exit_code == 1 and "is inside the source" in result.stderr
    _no_secrets(refused.stderr + result.stderr)


def test_credentials_in_the_url_work_and_stay_out_of_errors(s3_options, make_synthetic_plan):
    """``s3://KEY:SECRET@bucket/...``, the endpoint alone in storage options."""
    from ltray.data.prepare.orchestrator import PrepareOptions, prepare

    endpoint = {"client_kwargs": s3_options["client_kwargs"]}
    secret = "url-secret/with+slash"
    out = f"s3://URLKEYAKIA:{secret}@{BUCKET}/datasets/from-url"
    prepare(make_synthetic_plan(), out, PrepareOptions(storage_options=endpoint, workers=1))
    assert read_manifest(out, endpoint).num_rows("train") > 0
    assert secret not in fs.read_bytes(f"{out}/manifest.json", endpoint).decode()
    with pytest.raises(LtrayError) as info:
        read_manifest(out.replace("from-url", "missing"), endpoint)
    assert secret not in str(info.value) and "URLKEYAKIA" not in str(info.value)
