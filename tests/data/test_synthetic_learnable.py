"""The synthetic set must be learnable: a tiny CNN beats chance by far in a few epochs."""

import pytest
import torch
from torch import nn

from ltray.data.prepare import sources
from ltray.data.prepare.orchestrator import PrepareOptions, prepare
from ltray.data.stream import StreamingImageDataset, build_batch_transform, make_loader


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small, busy CPU more threads only spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_a_small_cnn_learns_the_synthetic_set(tmp_path, one_thread):
    torch.manual_seed(0)
    out = str(tmp_path / "synth")
    prepare(sources.synthetic(), out, PrepareOptions(workers=1))  # the CLI defaults
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = StreamingImageDataset(
        out, "train", batch_size=32, transform=build_batch_transform("cifar", 32, True)
    )
    for epoch in range(6):
        train.set_epoch(epoch)
        for batch in make_loader(train, num_workers=0):
            loss = nn.functional.cross_entropy(model(batch["image"].float() / 255), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = StreamingImageDataset(out, "test", batch_size=100, shuffle=False)
    correct = total = 0
    with torch.no_grad():
        for batch in make_loader(test, num_workers=0):
            correct += (
                (model(batch["image"].float() / 255).argmax(1) == batch["label"]).sum().item()
            )
            total += len(batch["label"])
    assert total == 500
    assert correct / total > 0.5, correct / total  # chance is 0.1
