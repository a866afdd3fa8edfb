"""Fixtures of the data-layer tests: small image trees, a prepared synthetic set, the archive."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltray.data.prepare import sources
from ltray.data.prepare.orchestrator import PrepareOptions, prepare
from ltray.data.shards import ShardLayout


def image_bytes(seed: int, size: int = 12, fmt: str = "JPEG") -> bytes:
    """A small random image, encoded."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_tree(root: Path, layout: dict[str, dict[str, int]], fmt: str = "JPEG") -> Path:
    """root/<split>/<class>/<i>.jpg for {split: {class: n}}; split '' writes root/<class>/."""
    ext = "jpg" if fmt == "JPEG" else "png"
    seed = 0
    for split, classes in layout.items():
        for name, n in classes.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                (folder / f"{i:04d}.{ext}").write_bytes(image_bytes(seed, fmt=fmt))
    return root


SMALL = {"train": {"ant": 6, "bee": 5, "cat": 4}, "test": {"ant": 2, "bee": 2, "cat": 2}}


# helpers as fixtures: with --import-mode=importlib test modules cannot import conftest
@pytest.fixture(scope="session")
def make_image():
    return image_bytes


@pytest.fixture(scope="session")
def make_tree():
    return write_tree


@pytest.fixture(scope="session")
def make_synthetic_plan():
    return synthetic_plan


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    """A 3-class tree with train/ and test/ (15 + 6 JPEGs)."""
    return write_tree(tmp_path / "src", SMALL)


def synthetic_plan(**kw) -> sources.SourcePlan:
    args = {"classes": 6, "n_max": 120, "imbalance": 10.0, "image_size": 16, "test_per_class": 10}
    return sources.synthetic(**{**args, **kw})


SMALL_LAYOUT = ShardLayout(shard_rows=100, shard_bytes=1 << 30, row_group_rows=16)


@pytest.fixture(scope="session")
def synth_ds(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A prepared synthetic set (6 classes, 303 train + 60 test rows) in several shards of
    16-row row groups, so partition and order have many units to work with. Read-only."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare(synthetic_plan(), str(out), PrepareOptions(layout=SMALL_LAYOUT, workers=1))
    return str(out)


TORCHVISION_CODEC_WARNING = "ignore:The image decoding and encoding capabilities:DeprecationWarning"
# the reader tests run 3 loader workers on purpose (odd counts) even on a 2-core machine
LOADER_WORKERS_WARNING = "ignore:This DataLoader will create:UserWarning"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """torchvision 0.29 warns that its codecs are deprecated (for TorchCodec) on every decode;
    ltray.data.decode silences it, but pytest resets filters per test, so mark ours."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings(TORCHVISION_CODEC_WARNING))
            item.add_marker(pytest.mark.filterwarnings(LOADER_WORKERS_WARNING))
