"""A small set with a val split, for the sweep tests."""

from __future__ import annotations

import pytest
from train_support import run_cli


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory) -> str:
    """4 classes, 32 px, IF 6 (96 training images) with a generated val split of 6 a class."""
    out = tmp_path_factory.mktemp("data") / "with-val"
    run_cli(
        "prepare", "synthetic", str(out), "--classes", "4", "--imbalance", "6", "--n-max", "48",
        "--image-size", "32", "--seed", "1", "--test-per-class", "8", "--val-per-class", "6",
    )  # fmt: skip
    return str(out)


@pytest.fixture(scope="session")
def data_without_val(tmp_path_factory) -> str:
    """The same set without a val split."""
    out = tmp_path_factory.mktemp("data") / "no-val"
    run_cli(
        "prepare", "synthetic", str(out), "--classes", "4", "--imbalance", "6", "--n-max", "48",
        "--image-size", "32", "--seed", "1", "--test-per-class", "8",
    )  # fmt: skip
    return str(out)
