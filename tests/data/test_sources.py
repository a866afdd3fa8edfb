import json
import pickle
import tarfile

import numpy as np
import pytest

from ltray.data.prepare import list_sources as listed
from ltray.data.prepare import sources
from ltray.data.prepare.image_refs import read_item
from ltray.data.prepare.synthetic import render_array
from ltray.data.profiles import exponential_counts
from ltray.errors import LtrayError


def _counts(plan, split="train"):
    out = [0] * len(plan.classes)
    for item in plan.splits[split]:
        out[item.label] += 1
    return out


def _tar(src, dest, mode):
    with tarfile.open(dest, mode) as tar:
        tar.add(src, arcname="wrapper")
    return dest


# --- image folders ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dir", "tar", "tgz"])
def test_imagefolder_tree_dir_tar_and_tgz(small_tree, tmp_path, kind):
    src = {
        "dir": lambda: small_tree,
        "tar": lambda: _tar(small_tree, tmp_path / "s.tar", "w"),
        "tgz": lambda: _tar(small_tree, tmp_path / "s.tar.gz", "w:gz"),
    }[kind]()
    plan = sources.imagefolder(str(src), str(tmp_path / "scratch"))
    assert plan.classes == ["ant", "bee", "cat"]
    assert _counts(plan) == [6, 5, 4] and _counts(plan, "test") == [2, 2, 2]
    first = plan.splits["train"][0]
    assert first.label == 0 and first.id.endswith("train/ant/0000.jpg")
    expected = (small_tree / "train" / "ant" / "0000.jpg").read_bytes()
    assert read_item(first) == expected  # bytes as stored, from a dir or by tar offset


def test_imagefolder_without_splits_is_all_train_and_ignores_loose_files(make_tree, tmp_path):
    root = make_tree(tmp_path / "flat", {"": {"x": 3, "y": 2}})
    (root / "README.txt").write_text("hi")
    (root / "x" / ".DS_Store").write_bytes(b"junk")
    plan = sources.imagefolder(str(root), str(tmp_path / "s"))
    assert list(plan.splits) == ["train"] and _counts(plan) == [3, 2]


def test_imagefolder_long_tail_takes_first_files_in_name_order(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", {"": {"a": 10, "b": 10, "c": 10}})
    plan = sources.imagefolder(str(root), str(tmp_path / "s"), imbalance=10)
    assert _counts(plan) == [10, 3, 1]
    assert [i.id for i in plan.splits["train"] if i.label == 1] == [
        f"b/{n:04d}.jpg" for n in range(3)
    ]
    assert plan.profile == {"name": "exp", "imbalance": 10.0, "n_max": 10, "seed": 0}
    pareto = sources.imagefolder(str(root), str(tmp_path / "s"), imbalance=10, profile="pareto")
    assert _counts(pareto)[0] == 10 and _counts(pareto)[-1] == 1


def test_imagefolder_val_fraction_is_seeded_and_disjoint(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", {"": {"a": 10, "b": 10}})
    plan = sources.imagefolder(str(root), str(tmp_path / "s"), val_fraction=0.2, seed=3)
    again = sources.imagefolder(str(root), str(tmp_path / "s"), val_fraction=0.2, seed=3)
    assert _counts(plan, "val") == [2, 2] and _counts(plan) == [8, 8]
    assert [i.id for i in plan.splits["val"]] == [i.id for i in again.splits["val"]]
    assert not {i.id for i in plan.splits["val"]} & {i.id for i in plan.splits["train"]}
    tree = make_tree(tmp_path / "t2", {"train": {"a": 2, "b": 2}, "val": {"a": 1}})
    with pytest.raises(LtrayError, match="already has a val"):
        sources.imagefolder(str(tree), str(tmp_path / "s"), val_fraction=0.5)


def test_imagefolder_errors(make_tree, tmp_path, small_tree):
    with pytest.raises(LtrayError, match="not found"):
        sources.imagefolder(str(tmp_path / "missing"), str(tmp_path / "s"))
    (small_tree / "train" / "dog").mkdir()
    with pytest.raises(LtrayError, match=r"class folder .*train/dog/ is empty"):
        sources.imagefolder(str(small_tree), str(tmp_path / "s"))
    one = make_tree(tmp_path / "one", {"": {"only": 2}})
    with pytest.raises(LtrayError, match="at least 2"):
        sources.imagefolder(str(one), str(tmp_path / "s"))
    extra = make_tree(tmp_path / "extra", {"train": {"a": 1, "b": 1}, "test": {"z": 1}})
    with pytest.raises(LtrayError, match="test/z/ is a class that train/ does not have"):
        sources.imagefolder(str(extra), str(tmp_path / "s"))
    notar = tmp_path / "broken.tar.gz"
    notar.write_bytes(b"this is not gzip")
    with pytest.raises(LtrayError, match=r"broken\.tar\.gz: not a readable"):
        sources.imagefolder(str(notar), str(tmp_path / "s"))


# --- CIFAR pickles -----------------------------------------------------------------------------


def _fake_cifar10(root, per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = {
            "data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(data))
    return root


def test_cifar_from_torchvision_pickles_encodes_png_losslessly(tmp_path):
    from ltray.data.decode import decode_rgb

    root = _fake_cifar10(tmp_path / "tv")
    # this fake holds 10 images a class: a subset of CIFAR-10, so n_max 10 (not 5000)
    plan = sources.cifar_lt(str(root), str(tmp_path / "s"), imbalance=5, n_max=10)
    assert plan.classes[0] == "airplane" and len(plan.classes) == 10
    assert _counts(plan) == exponential_counts(10, 10, 5) and _counts(plan, "test") == [2] * 10
    item = plan.splits["train"][0]
    assert item.id == "data_batch_1/00000"
    raw = pickle.loads((root / "cifar-10-batches-py" / "data_batch_1").read_bytes())["data"][0]
    pixels = decode_rgb(read_item(item)).numpy()
    assert np.array_equal(pixels, raw.reshape(3, 32, 32))
    with pytest.raises(LtrayError, match="holds cifar10, but --dataset is cifar100"):
        sources.cifar_lt(str(root), str(tmp_path / "s"), imbalance=5, dataset="cifar100")
    # with the protocol's n_max of 5000 this subset cannot give CIFAR-10-LT: refused, not faked
    with pytest.raises(LtrayError, match=r"needs 5000 train images in class 'airplane'.*has 10"):
        sources.cifar_lt(str(root), str(tmp_path / "s"), imbalance=5)


def test_cifar_from_folder_checks_class_count(small_tree, tmp_path):
    with pytest.raises(LtrayError, match="has 3 classes; cifar10 has 10"):
        sources.cifar_lt(str(small_tree), str(tmp_path / "s"), imbalance=10)


# --- ImageNet-LT -------------------------------------------------------------------------------


def _imagenet_lt(tmp_path, make_tree, train_lines=None, val_lines=None):
    images = make_tree(
        tmp_path / "imgs", {"train": {"n01": 3, "n02": 2}, "val": {"n01": 1, "n02": 1}}
    )
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    train = train_lines or [
        "train/n01/0000.jpg 0", "train/n01/0001.jpg 0", "train/n01/0002.jpg 0",
        "train/n02/0000.jpg 1", "", "train/n02/0001.jpg 1",
    ]  # fmt: skip
    (lists / "ImageNet_LT_train.txt").write_text("\n".join(train) + "\n")
    val = val_lines or ["val/n01/0000.jpg 0", "val/n02/0000.jpg 1"]
    (lists / "ImageNet_LT_val.txt").write_text("\n".join(val) + "\n")
    return images, lists


def test_imagenet_lt_lists(tmp_path, make_tree):
    images, lists = _imagenet_lt(tmp_path, make_tree)
    plan = listed.imagenet_lt(str(images), str(lists))
    assert plan.classes == ["class_0", "class_1"]
    assert _counts(plan) == [3, 2] and _counts(plan, "val") == [1, 1] and "test" not in plan.splits
    assert plan.profile["name"] == "given" and plan.profile["imbalance"] == 1.5
    assert read_item(plan.splits["train"][0]) == (images / "train/n01/0000.jpg").read_bytes()
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\n")
    assert listed.imagenet_lt(str(images), str(lists), classes_file=str(names)).classes == [
        "tench",
        "goldfish",
    ]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            ["train/n01/0000.jpg 0", "garbage"],
            r"ImageNet_LT_train.txt line 2: expected 'PATH LABEL'",
        ),
        (["train/n01/0000.jpg x"], "line 1: expected"),
        (["train/n01/0000.jpg 0", "train/n02/0000.jpg -1"], r"line 2: label -1 is outside"),
        (["train/n01/0000.jpg 0", "train/n01/0000.jpg 0"], "line 2: .* listed again"),
    ],
)
def test_imagenet_lt_bad_lists(tmp_path, make_tree, lines, match):
    images, lists = _imagenet_lt(tmp_path, make_tree, train_lines=lines)
    with pytest.raises(LtrayError, match=match):
        listed.imagenet_lt(str(images), str(lists))


def test_imagenet_lt_label_outside_range_and_empty_class(tmp_path, make_tree):
    images, lists = _imagenet_lt(tmp_path, make_tree, val_lines=["val/n01/0000.jpg 7"])
    with pytest.raises(
        LtrayError, match=r"ImageNet_LT_val.txt line 1: label 7 is outside .*\[0, 2\)"
    ):
        listed.imagenet_lt(str(images), str(lists))
    images, lists = _imagenet_lt(tmp_path, make_tree)
    with pytest.raises(LtrayError, match=r"class 2 \(class_2\) has no train images"):
        listed.imagenet_lt(str(images), str(lists), num_classes=3)
    with pytest.raises(LtrayError, match="not found"):
        listed.imagenet_lt(str(images), str(tmp_path / "nolists"))


# --- iNaturalist 2018 --------------------------------------------------------------------------


def _inat(tmp_path, make_tree, val_annotations=None):
    images = make_tree(tmp_path / "imgs", {"train_val2018": {"p1": 3, "p2": 2}})
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    cats = [{"id": 40, "name": "Pinus"}, {"id": 7, "name": "Abies"}]
    files = [f"train_val2018/p1/{i:04d}.jpg" for i in range(3)] + [
        f"train_val2018/p2/{i:04d}.jpg" for i in range(2)
    ]
    train = {
        "images": [{"id": 100 + i, "file_name": f} for i, f in enumerate(files)],
        "annotations": [{"image_id": 100 + i, "category_id": 40 if i < 3 else 7} for i in range(5)],
        "categories": cats,
    }
    (ann / "train2018.json").write_text(json.dumps(train, indent=1))
    val = {
        "images": [{"id": 1, "file_name": files[0]}],
        "annotations": val_annotations or [{"image_id": 1, "category_id": 7}],
        "categories": cats,
    }
    (ann / "val2018.json").write_text(json.dumps(val))
    return images, ann


def test_inat18_labels_are_sorted_category_ids(tmp_path, make_tree):
    images, ann = _inat(tmp_path, make_tree)
    plan = listed.inat18(str(images), str(ann))
    assert plan.classes == ["Abies", "Pinus"]  # id 7 -> label 0, id 40 -> label 1
    assert _counts(plan) == [2, 3] and _counts(plan, "val") == [1, 0]


def test_inat18_errors(tmp_path, make_tree):
    images, ann = _inat(tmp_path, make_tree, val_annotations=[{"image_id": 1, "category_id": 99}])
    with pytest.raises(
        LtrayError, match=r"val2018.json: annotation 0 .*category_id 99 is outside the class range"
    ):
        listed.inat18(str(images), str(ann))
    (ann / "val2018.json").write_text('{"images": [\n  {"id": 1,\n  oops}')
    with pytest.raises(LtrayError, match="val2018.json line 3: not valid JSON"):
        listed.inat18(str(images), str(ann))
    (ann / "val2018.json").write_text(
        json.dumps({"images": [{"id": 5, "file_name": "x.jpg"}], "annotations": []})
    )
    with pytest.raises(LtrayError, match="image 5 .*has no annotation"):
        listed.inat18(str(images), str(ann))


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_is_deterministic_long_tailed_and_distinct():
    plan = sources.synthetic(classes=4, n_max=40, imbalance=4, test_per_class=3, seed=1)
    assert _counts(plan) == [40, 25, 15, 10] and _counts(plan, "test") == [3] * 4
    a, b = plan.splits["train"][0], plan.splits["train"][1]
    assert read_item(a) == read_item(a) and read_item(a) != read_item(b)
    other_seed = sources.synthetic(classes=4, n_max=40, imbalance=4, seed=2).splits["train"][0]
    assert read_item(other_seed) != read_item(a)
    # classes differ in colour: mean colours of two classes are far apart
    means = [render_array(plan.splits["test"][3 * c].ref).reshape(-1, 3).mean(0) for c in range(4)]
    assert min(np.abs(means[i] - means[j]).sum() for i in range(4) for j in range(i)) > 20


def test_synthetic_rejects_bad_options():
    with pytest.raises(LtrayError, match="--classes"):
        sources.synthetic(classes=1)
    with pytest.raises(LtrayError, match="--image-size"):
        sources.synthetic(image_size=4)
    with pytest.raises(LtrayError, match="--format"):
        sources.synthetic(fmt="gif")


# --- inputs that used to pass silently (issue 13, items 7 and 8) ---------------------------


def test_inat18_annotations_must_name_an_image_and_agree(tmp_path, make_tree):
    stray = [{"image_id": 1, "category_id": 7}, {"image_id": 999, "category_id": 7}]
    images, ann = _inat(tmp_path, make_tree, val_annotations=stray)
    with pytest.raises(
        LtrayError, match=r"^val2018.json: annotation 1 names image_id 999, not in 'images'$"
    ):
        listed.inat18(str(images), str(ann))
    twice = [{"image_id": 1, "category_id": 7}, {"image_id": 1, "category_id": 40}]
    images, ann = _inat(tmp_path, make_tree, val_annotations=twice)
    with pytest.raises(
        LtrayError,
        match=r"val2018.json: annotation 1 gives image 1 category_id 40, but annotation 0 gave",
    ):
        listed.inat18(str(images), str(ann))
    same = [{"image_id": 1, "category_id": 7}, {"image_id": 1, "category_id": 7}]  # two boxes
    images, ann = _inat(tmp_path, make_tree, val_annotations=same)
    assert _counts(listed.inat18(str(images), str(ann)), "val") == [1, 0]


def test_imagenet_lt_train_label_past_a_gap_names_its_line(tmp_path, make_tree):
    lines = ["train/n01/0000.jpg 0", "train/n01/0001.jpg 1", "train/n02/0000.jpg 6"]
    images, lists = _imagenet_lt(tmp_path, make_tree, train_lines=lines)
    with pytest.raises(
        LtrayError,
        match=r"^ImageNet_LT_train.txt line 3: label 6 is out of range: labels 0-1 have train "
        r"images, 2-5 none \(pass --num-classes or --classes if that is meant\)$",
    ):
        listed.imagenet_lt(str(images), str(lists), classes_file=None)


def test_imagenet_lt_classes_file_with_the_wrong_count_is_named(tmp_path, make_tree):
    images, lists = _imagenet_lt(tmp_path, make_tree)
    names = tmp_path / "names.txt"
    for given in (["tench"], ["tench", "goldfish", "shark"]):
        names.write_text("\n".join(given) + "\n")
        with pytest.raises(
            LtrayError,
            match=rf"names.txt: {len(given)} class names, but ImageNet_LT_train.txt has labels "
            r"0-1 \(the largest on line 4\), so 2 classes$",
        ):
            listed.imagenet_lt(str(images), str(lists), classes_file=str(names))


def test_imagenet_lt_class_names_default_to_the_wordnet_ids(tmp_path, make_tree):
    wnids = ["n01440764", "n01443537"]
    images = make_tree(tmp_path / "imgs", {"train": {wnids[0]: 2, wnids[1]: 1}})
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [f"train/{wnids[0]}/0000.jpg 0", f"train/{wnids[0]}/0001.jpg 0"]
    rows.append(f"train/{wnids[1]}/0000.jpg 1")
    (lists / "ImageNet_LT_train.txt").write_text("\n".join(rows) + "\n")
    assert listed.imagenet_lt(str(images), str(lists)).classes == wnids
    # a label whose paths carry two ids (or none) keeps the neutral names
    rows[1] = f"train/{wnids[1]}/0000.jpg 0"
    rows[2] = f"train/{wnids[0]}/0001.jpg 1"
    (lists / "ImageNet_LT_train.txt").write_text("\n".join(rows) + "\n")
    assert listed.imagenet_lt(str(images), str(lists)).classes == ["class_0", "class_1"]


def test_listed_images_are_stamped_from_one_listing_per_folder(tmp_path, make_tree):
    images, lists = _imagenet_lt(tmp_path, make_tree)
    (lists / "ImageNet_LT_val.txt").write_text("val/n01/0000.jpg 0\nval/n02/gone.jpg 1\n")
    plan = listed.imagenet_lt(str(images), str(lists))
    first = plan.splits["train"][0]
    size = (images / first.id).stat().st_size
    assert first.size == size and first.stamp.startswith(f"{size}:")
    assert [i.stamp for i in plan.splits["val"]][1] == "missing"


def test_os_files_in_image_folders_are_not_images(make_tree, tmp_path):
    root = make_tree(tmp_path / "t", {"": {"x": 2, "y": 2}})
    (root / "x" / "Thumbs.db").write_bytes(b"\x00junk")
    (root / "y" / "desktop.ini").write_text("[.ShellClassInfo]")
    (root / "x" / ".DS_Store").write_bytes(b"junk")
    assert _counts(sources.imagefolder(str(root), str(tmp_path / "s"))) == [2, 2]
    (root / "__MACOSX" / "x").mkdir(parents=True)
    (root / "__MACOSX" / "x" / "._0000.jpg").write_bytes(b"resource fork")
    plan = sources.imagefolder(str(root), str(tmp_path / "s"))
    assert plan.classes == ["x", "y"] and _counts(plan) == [2, 2]


def test_tree_items_carry_size_and_mtime_stamps(small_tree, tmp_path):
    plan = sources.imagefolder(str(small_tree), str(tmp_path / "s"))
    item = plan.splits["train"][0]
    stat = (small_tree / item.id).stat()
    assert item.stamp == f"{stat.st_size}:{stat.st_mtime}"
    tar = _tar(small_tree, tmp_path / "s.tar", "w")
    tarred = sources.imagefolder(str(tar), str(tmp_path / "s")).splits["train"][0]
    assert tarred.stamp.startswith(f"{stat.st_size}:")
