"""The real CIFAR-10 archive (../shared/data beside the checkout) through `ltray prepare`."""

import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ltray.cli.prepare import app
from ltray.data import read_manifest
from ltray.data.stream import StreamingImageDataset, build_batch_transform, make_loader

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


@pytest.mark.shared_data
@pytest.mark.slow
def test_cifar10_lt_if100_from_the_archive(cifar_archive, tmp_path):
    out = tmp_path / "cifar10-lt-100"
    result = CliRunner().invoke(
        app, ["cifar-lt", str(cifar_archive), str(out), "--imbalance", "100"]
    )
    assert result.exit_code == 0, result.output
    assert "train 12,406 rows" in result.stdout and "test 10,000 rows" in result.stdout

    m = read_manifest(str(out))
    assert m.classes == CLASSES
    assert m.class_counts("train") == CIFAR10_LT_100 and m.num_rows("train") == 12_406
    assert m.class_counts("test") == [1000] * 10 and m.num_rows("test") == 10_000
    assert m.groups() == ["many"] * 8 + ["medium"] * 2
    assert (m.profile["name"], m.profile["imbalance"], m.profile["n_max"]) == ("exp", 100.0, 5000)

    with tarfile.open(cifar_archive) as tar:
        members = {t.name: tar.extractfile(t).read() for t in tar if t.isfile()}
    for split, counts in [("train", CIFAR10_LT_100), ("test", [1000] * 10)]:
        rows = []
        for shard in m.shards(split):
            rows += pq.read_table(Path(out) / shard.path).to_pylist()
        expected = {
            f"cifar10/{split}/{name}/{i:04d}.jpg": label
            for label, (name, n) in enumerate(zip(CLASSES, counts, strict=True))
            for i in range(n)  # the first n_c files of each class in file-name order
        }
        assert {r["id"]: r["label"] for r in rows} == expected
        for r in rows:
            assert r["image"] == members[r["id"]]  # byte-identical, never re-encoded

        ds = StreamingImageDataset(str(out), split, batch_size=1000, shuffle=False, decode=False)
        streamed = Counter()
        for batch in make_loader(ds, num_workers=2):
            for index, image, label in zip(
                batch["index"].tolist(), batch["image"], batch["label"].tolist(), strict=True
            ):
                assert image == rows[index]["image"] and label == rows[index]["label"]
                streamed[index] += 1
        assert sorted(streamed) == list(range(len(rows))) and set(streamed.values()) == {1}
        assert Counter(r["label"] for r in rows) == dict(enumerate(counts))

    ds = StreamingImageDataset(
        str(out), "train", batch_size=256, transform=build_batch_transform("cifar", 32, True)
    )
    batch = next(iter(make_loader(ds, num_workers=0)))
    assert batch["image"].shape == (256, 3, 32, 32)
