"""Shared fixtures for the method tests: seeded random logits and a minimal head."""

from types import SimpleNamespace

import pytest
import torch

COUNTS = [500, 120, 40, 9, 2]


@pytest.fixture
def counts() -> list[int]:
    """A long-tailed training split of 5 classes (many, many, medium, few, few)."""
    return list(COUNTS)


@pytest.fixture
def batch():
    """Random float64 logits [12, 5], features [12, 6] and targets covering every class."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, len(COUNTS), dtype=torch.float64, generator=gen) * 3
    features = torch.randn(12, 6, dtype=torch.float64, generator=gen)
    target = torch.arange(12) % len(COUNTS)
    return logits, features, target


@pytest.fixture
def linear_head():
    """A stand-in head for losses that do not read it."""
    return SimpleNamespace(kind="linear", weight=torch.zeros(len(COUNTS), 6))
