"""Small data sets for the training tests."""

from __future__ import annotations

import pytest
from train_support import run_cli


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """4 classes, 32 px, IF 10: about 100 training images; seconds to prepare."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    run_cli(
        "prepare",
        "synthetic",
        str(out),
        "--classes",
        "4",
        "--n-max",
        "48",
        "--imbalance",
        "6",
        "--image-size",
        "32",
        "--test-per-class",
        "8",
        "--seed",
        "1",
    )
    return str(out)


@pytest.fixture(scope="session")
def odd_data(tmp_path_factory) -> str:
    """89 training images (odd: ranks' every-row-once shares differ) in row groups of 16."""
    out = tmp_path_factory.mktemp("data") / "odd"
    run_cli(
        "prepare",
        "synthetic",
        str(out),
        "--classes",
        "4",
        "--n-max",
        "45",
        "--imbalance",
        "6",
        "--image-size",
        "32",
        "--test-per-class",
        "4",
        "--row-group-rows",
        "16",
        "--seed",
        "1",
    )
    return str(out)
