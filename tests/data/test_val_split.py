"""``--val-per-class N``: a balanced val split held out from the training images at prepare time."""

import hashlib
import json

import pytest
from data_support import split_rows
from typer.testing import CliRunner

from ltray.cli.prepare import app
from ltray.data import read_manifest
from ltray.data.prepare import list_sources as listed
from ltray.data.prepare import sources
from ltray.data.prepare.orchestrator import PrepareOptions, plan_fingerprints, prepare
from ltray.data.shards import ShardLayout
from ltray.errors import LtrayError

# exp profile, n_max 10, IF 5, 3 classes: [10, int(10 / sqrt 5) = 4, 2]
TREE = {"train": {"a": 10, "b": 10, "c": 10}, "test": {"a": 3, "b": 3, "c": 3}}
PROFILE = [10, 4, 2]


def _ids(plan, split, label=None):
    return [i.id for i in plan.splits[split] if label is None or i.label == label]


def _counts(plan, split):
    out = [0] * len(plan.classes)
    for item in plan.splits[split]:
        out[item.label] += 1
    return out


def _plan(root, scratch, **kw):
    args = {"imbalance": 5.0, "val_per_class": 3, "seed": 0}
    return sources.imagefolder(str(root), str(scratch), **{**args, **kw})


def test_val_comes_from_left_out_images_first_then_from_kept(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", TREE)
    plan = _plan(root, tmp_path / "s")
    assert _counts(plan, "val") == [3, 3, 3]
    # a keeps all 10 (nothing left out): val takes 3 of them; b and c keep their profile
    assert _counts(plan, "train") == [7, 4, 2]
    for label, name in enumerate("abc"):
        kept = [f"train/{name}/{i:04d}.jpg" for i in range(PROFILE[label])]
        val = _ids(plan, "val", label)
        train = _ids(plan, "train", label)
        if label == 0:
            assert set(val) | set(train) == set(kept) and not set(val) & set(train)
        else:
            assert train == kept  # the published profile: the first n_c, untouched
            assert not set(val) & set(kept)  # all from the left-out images
    assert plan.val_carve.from_left_out == [0, 3, 3]
    assert plan.val_carve.from_kept == [3, 0, 0]
    assert plan.params["val_per_class"] == 3


def test_val_is_deterministic_in_the_seed(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", {"": {"a": 40, "b": 40}})
    same = [_plan(root, tmp_path / "s", imbalance=2.0, val_per_class=5, seed=7) for _ in range(2)]
    other = _plan(root, tmp_path / "s", imbalance=2.0, val_per_class=5, seed=8)
    assert _ids(same[0], "val") == _ids(same[1], "val")
    assert _ids(same[0], "train") == _ids(same[1], "train")
    # class a (nothing left out) draws 5 of 40 kept, class b 5 of 20 left out: two seeds
    # agree on both by chance with probability 1/C(40,5) * 1/C(20,5) < 1e-9
    for label in (0, 1):
        assert set(_ids(same[0], "val", label)) != set(_ids(other, "val", label))


def test_imagefolder_without_imbalance_takes_val_from_train(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", {"": {"a": 5, "b": 3}})
    plan = sources.imagefolder(str(root), str(tmp_path / "s"), val_per_class=2)
    assert _counts(plan, "val") == [2, 2] and _counts(plan, "train") == [3, 1]
    assert not set(_ids(plan, "val")) & set(_ids(plan, "train"))


def test_refusals_name_the_culprit(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", {"": {"a": 5, "b": 3}})
    scratch = str(tmp_path / "s")
    with pytest.raises(
        LtrayError,
        match=r"^--val-per-class 3: class 'b' \(label 1\) has 3 training image\(s\), fewer than "
        r"3 \+ 1 .*at most --val-per-class 2$",
    ):
        sources.imagefolder(str(root), scratch, val_per_class=3)
    with pytest.raises(LtrayError, match="--val-per-class and --val-fraction both carve val"):
        sources.imagefolder(str(root), scratch, val_per_class=1, val_fraction=0.2)
    with pytest.raises(LtrayError, match="--val-per-class must be >= 0, got -1"):
        sources.imagefolder(str(root), scratch, val_per_class=-1)
    tree = make_tree(tmp_path / "t2", {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 1}})
    with pytest.raises(LtrayError, match=r"^--val-per-class: the source already has a val/ split"):
        sources.imagefolder(str(tree), scratch, val_per_class=1)


def test_fingerprint_changes_with_n_and_stays_without_it(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", TREE)
    layout = ShardLayout()
    prints = {
        n: plan_fingerprints(_plan(root, tmp_path / "s", val_per_class=n), layout)
        for n in (0, 1, 2)
    }
    assert len({p["fingerprint"] for p in prints.values()}) == 3
    assert prints[1]["recipe"] != prints[2]["recipe"]  # not only through the items
    assert "val_per_class" not in prints[0]["recipe"]["params"]  # old data sets keep theirs


def test_prepare_records_the_carve_and_val_shares_no_image(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", TREE)
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app, ["imagefolder", str(root), str(out), "--imbalance", "5", "--val-per-class", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "val: 3 per class held out from the training images (6 the profile left out, " in (
        result.stdout
    )
    assert "3 it kept)" in result.stdout
    assert "warning: --val-per-class 3: 1 class(es) had too few images" in result.stdout
    assert "'a' keeps 7 of 10" in result.stdout
    m = read_manifest(str(out))
    assert m.class_counts("val") == [3, 3, 3] and m.class_counts("train") == [7, 4, 2]
    assert m.profile["val_split"] == {
        "per_class": 3,
        "from_left_out": 6,
        "from_kept": 3,
        "classes_reduced": [0],
    }
    assert [(e["val_from_left_out"], e["val_from_kept"]) for e in m.profile["per_class"]] == [
        (0, 3),
        (3, 0),
        (3, 0),
    ]
    assert len(m.warnings) == 1 and "'a' keeps 7 of 10" in m.warnings[0]
    assert m.source["val_per_class"] == 3
    rows = {split: split_rows(out, split) for split in ("train", "val", "test")}
    ids = {split: {r["id"] for r in rs} for split, rs in rows.items()}
    sha = {s: {hashlib.sha256(r["image"]).hexdigest() for r in rs} for s, rs in rows.items()}
    assert len(ids["val"]) == len(sha["val"]) == 9
    for other in ("train", "test"):
        assert not ids["val"] & ids[other] and not sha["val"] & sha[other]


def test_cli_refuses_both_val_options_in_one_line(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", {"": {"a": 5, "b": 5}})
    result = CliRunner().invoke(
        app,
        ["imagefolder", str(root), str(tmp_path / "o"), "--val-per-class", "1"]
        + ["--val-fraction", "0.2"],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --val-per-class and --val-fraction both carve val: pass one of them"
    ]
    assert not (tmp_path / "o").exists()


def _inat_tree(tmp_path, make_tree):
    images = make_tree(tmp_path / "imgs", {"train_val2018": {"p1": 6, "p2": 3, "v": 2}})
    ann = tmp_path / "ann"
    ann.mkdir()
    cats = [{"id": 40, "name": "Pinus"}, {"id": 7, "name": "Abies"}]
    train_files = [(f"train_val2018/p1/{i:04d}.jpg", 40) for i in range(6)]
    train_files += [(f"train_val2018/p2/{i:04d}.jpg", 7) for i in range(3)]
    val_files = [("train_val2018/v/0000.jpg", 40), ("train_val2018/v/0001.jpg", 7)]

    def coco(files):
        return {
            "images": [{"id": i, "file_name": f} for i, (f, _) in enumerate(files)],
            "annotations": [{"image_id": i, "category_id": c} for i, (_, c) in enumerate(files)],
            "categories": cats,
        }

    (ann / "train2018.json").write_text(json.dumps(coco(train_files)))
    (ann / "val2018.json").write_text(json.dumps(coco(val_files)))
    return images, ann


def test_inat18_val_per_class_carves_train2018_and_makes_val2018_test(tmp_path, make_tree):
    images, ann = _inat_tree(tmp_path, make_tree)
    plain = listed.inat18(str(images), str(ann))
    assert list(plain.splits) == ["train", "val"] and _counts(plain, "val") == [1, 1]
    plan = listed.inat18(str(images), str(ann), val_per_class=2, seed=1)
    assert list(plan.splits) == ["train", "val", "test"]
    assert _ids(plan, "test") == _ids(plain, "val")  # val2018, the official held-out set
    assert _counts(plan, "val") == [2, 2] and _counts(plan, "train") == [1, 4]  # Abies, Pinus
    assert set(_ids(plan, "val")) | set(_ids(plan, "train")) == set(_ids(plain, "train"))
    assert not set(_ids(plan, "val")) & set(_ids(plan, "train"))
    assert plan.val_carve.from_kept == [2, 2] and plan.profile["n_max"] == 4
    assert plan.params["val_per_class"] == 2 and "val_per_class" not in plain.params
    with pytest.raises(LtrayError, match=r"class 'Abies' \(label 0\) has 3 training image"):
        listed.inat18(str(images), str(ann), val_per_class=3)


def test_prepare_writes_val_rows_in_source_order(make_tree, tmp_path):
    """The plan as the orchestrator writes it: val rows in source order, one row per image."""
    root = make_tree(tmp_path / "t", TREE)
    plan = _plan(root, tmp_path / "s")
    out = tmp_path / "ds"
    prepare(plan, str(out), PrepareOptions(workers=1))
    assert [r["id"] for r in split_rows(out, "val")] == _ids(plan, "val")


# --- the real CIFAR-10 archive ----------------------------------------------------------------

CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.shared_data
@pytest.mark.slow
def test_cifar10_lt_100_with_50_val_per_class(cifar_archive, tmp_path):
    out = tmp_path / "cifar10-lt-100-val50"
    result = CliRunner().invoke(
        app,
        ["cifar-lt", str(cifar_archive), str(out), "--imbalance", "100", "--val-per-class", "50"],
    )
    assert result.exit_code == 0, result.output
    assert "val 500 rows" in result.stdout and "test 10,000 rows" in result.stdout
    # class 0 keeps all 5,000 (nothing left out) and gives 50; the others give left-out ones
    assert (
        "val: 50 per class held out from the training images (450 the profile left out, "
        "50 it kept)" in result.stdout
    )
    assert "'airplane' keeps 4,950 of 5,000" in result.stdout
    assert "imbalance 99 (requested 100)" in result.stdout

    m = read_manifest(str(out))
    assert m.class_counts("val") == [50] * 10
    assert m.class_counts("train") == [4950] + CIFAR10_LT_100[1:]
    assert m.class_counts("test") == [1000] * 10
    assert m.profile["val_split"]["classes_reduced"] == [0]
    assert len(m.warnings) == 1 and "'airplane' keeps 4,950 of 5,000" in m.warnings[0]

    rows = {split: split_rows(out, split) for split in ("train", "val", "test")}
    ids = {split: {r["id"] for r in rs} for split, rs in rows.items()}
    sha = {s: {hashlib.sha256(r["image"]).hexdigest() for r in rs} for s, rs in rows.items()}
    assert len(ids["val"]) == len(sha["val"]) == 500
    assert all(i.startswith("cifar10/train/") for i in ids["val"])
    for other in ("train", "test"):
        assert not ids["val"] & ids[other], other
        assert not sha["val"] & sha[other], other
    # classes 1-9 are exactly the published IF-100 set: their first n_c files
    for c in range(1, 10):
        train_c = sorted(r["id"] for r in rows["train"] if r["label"] == c)
        expected = [f"cifar10/train/{CLASSES[c]}/{i:04d}.jpg" for i in range(CIFAR10_LT_100[c])]
        assert train_c == expected

    def val_ids(seed):
        plan = sources.cifar_lt(
            str(cifar_archive), str(tmp_path / f"s{seed}"), imbalance=100, val_per_class=50,
            seed=seed,
        )  # fmt: skip
        return _ids(plan, "val")

    assert sorted(val_ids(0)) == sorted(ids["val"])  # same seed, same images
    other = set(val_ids(1))
    # a seed-1 draw of 50 matching seed 0's in even one class has probability < 1e-80
    for label in range(10):
        mine = {r["id"] for r in rows["val"] if r["label"] == label}
        assert mine != {i for i in other if f"/{CLASSES[label]}/" in i}
