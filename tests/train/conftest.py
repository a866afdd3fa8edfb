"""Small data sets for the training tests."""

from __future__ import annotations

import pytest
from train_support import run_cli


def synthetic(out, *options: str) -> str:
    """A generated 4-class, 32 px set at IF 6 (seed 1), with ``options`` added."""
    run_cli(
        "prepare", "synthetic", str(out), "--classes", "4", "--imbalance", "6",
        "--image-size", "32", "--seed", "1", *options,
    )  # fmt: skip
    return str(out)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """4 classes, 32 px, IF 6: about 100 training images; seconds to prepare."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    return synthetic(out, "--n-max", "48", "--test-per-class", "8")


@pytest.fixture(scope="session")
def odd_data(tmp_path_factory) -> str:
    """89 training images (odd: ranks' every-row-once shares differ) in row groups of 16."""
    out = tmp_path_factory.mktemp("data") / "odd"
    return synthetic(out, "--n-max", "45", "--test-per-class", "4", "--row-group-rows", "16")


@pytest.fixture(scope="session")
def val_data(tmp_path_factory) -> str:
    """4 classes, 32 px, IF 6, with a balanced val split of 4 per class."""
    out = tmp_path_factory.mktemp("data") / "with-val"
    return synthetic(out, "--n-max", "24", "--val-per-class", "4", "--test-per-class", "4")
