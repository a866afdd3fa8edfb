"""The decoupled second stage: cRT and LWS fix a biased head; tau-norm picks tau on val."""

import pytest
import torch
import torch.nn.functional as F

from ltray.config import DecoupledConfig
from ltray.errors import LtrayError
from ltray.models import CosineHead, LinearHead
from ltray.train.decoupled import class_balanced_batches, run_decoupled

C, D = 10, 16


def long_tailed_features(seed=0):
    """Gaussian classes around random means; train 300 -> 3 a class (IF 100), test balanced."""
    gen = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(C, D, generator=gen), dim=1) * 3.0
    counts = [int(300 * 0.01 ** (c / (C - 1))) for c in range(C)]

    def sample(per_class):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
        return means[labels] + torch.randn(len(labels), D, generator=gen), labels

    train_x, train_y = sample(counts)
    val_x, val_y = sample([50] * C)
    test_x, test_y = sample([200] * C)
    return counts, (train_x, train_y), (val_x, val_y), (test_x, test_y)


def joint_head(train_x, train_y, seed=0):
    """Stage 1 stand-in: a linear head trained with plain CE on the imbalanced set."""
    torch.manual_seed(seed)
    head = LinearHead(D, C)
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(head(train_x), train_y).backward()
        opt.step()
    return head


def balanced_accuracy(head, x, y):
    with torch.no_grad():
        pred = head(x).argmax(1)
    return torch.stack([(pred[y == c] == c).float().mean() for c in range(C)]).mean().item()


@pytest.fixture(scope="module")
def setup():
    counts, train, val, test = long_tailed_features()
    return counts, train, val, test, joint_head(*train)


@pytest.mark.parametrize("method", ["crt", "lws", "tau_norm"])
def test_second_stage_improves_balanced_accuracy(setup, method):
    counts, (train_x, train_y), (val_x, val_y), (test_x, test_y), head = setup
    before = balanced_accuracy(head, test_x, test_y)
    cfg = DecoupledConfig(epochs=30, lr=0.2)
    weight_before = head.weight.detach().clone()
    new_head, info = run_decoupled(
        method, head, train_x, train_y, val_x, val_y, counts, cfg, seed=0
    )
    after = balanced_accuracy(new_head, test_x, test_y)
    assert after > before + 0.015, (method, before, after)
    assert isinstance(new_head, LinearHead)
    assert 0.0 <= info["val_acc"] <= 1.0
    torch.testing.assert_close(head.weight.detach(), weight_before)  # input untouched
    if method == "lws":
        assert len(info["scales"]) == C
        scales = torch.tensor(info["scales"])
        torch.testing.assert_close(new_head.weight, weight_before * scales[:, None])
        torch.testing.assert_close(new_head.bias, head.bias.detach() * scales)


@pytest.mark.parametrize("method", ["crt", "lws"])
def test_second_stage_is_deterministic_given_the_seed(setup, method):
    counts, (train_x, train_y), (val_x, val_y), _, head = setup
    cfg = DecoupledConfig(epochs=2, lr=0.2)
    runs = [
        run_decoupled(method, head, train_x, train_y, val_x, val_y, counts, cfg, seed=s)[0]
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0].weight, runs[1].weight)
    assert not torch.equal(runs[0].weight, runs[2].weight)


def test_tau_norm_picks_the_tau_that_is_best_on_val():
    """Rows with very different norms; the val labels are what tau* = 0.7 predicts, so 0.7
    is the one grid value with full accuracy, and the train features are never looked at."""
    tau_star = 0.7
    gen = torch.Generator().manual_seed(0)
    head = LinearHead(4, 4, bias=False)
    norms = torch.tensor([8.0, 4.0, 2.0, 1.0])
    with torch.no_grad():
        head.weight.copy_(torch.diag(norms))
    val_x = torch.rand(4000, 4, generator=gen)
    val_y = (val_x * norms ** (1 - tau_star)).argmax(1)
    junk_x, junk_y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    cfg = DecoupledConfig()  # grid 0.0, 0.1, ..., 2.0
    new_head, info = run_decoupled(
        "tau_norm", head, junk_x, junk_y, val_x, val_y, [8, 4, 2, 1], cfg, seed=0
    )
    assert info["tau"] == pytest.approx(tau_star)
    assert info["val_acc"] == 1.0
    assert info["val_acc_by_tau"][0.6] < 1.0 and info["val_acc_by_tau"][0.8] < 1.0
    torch.testing.assert_close(new_head.weight, torch.diag(norms ** (1 - tau_star)))


def test_class_balanced_sampling_draws_each_class_equally():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([1000, 100, 10, 1])])
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat(list(class_balanced_batches(labels, 40_000, 512, gen)))
    assert len(drawn) == 40_000
    freq = torch.bincount(labels[drawn], minlength=4).float() / len(drawn)
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.01)
    assert set(drawn[labels[drawn] == 3].tolist()) == {1110}


def test_bad_arguments_are_clear_errors(setup):
    counts, (train_x, train_y), (val_x, val_y), _, head = setup
    args = (train_x, train_y, val_x, val_y, counts)
    with pytest.raises(LtrayError, match="crt, lws, tau_norm"):
        run_decoupled("ncm", head, *args, DecoupledConfig(), seed=0)
    with pytest.raises(LtrayError, match="linear head"):
        run_decoupled("crt", CosineHead(D, C), *args, DecoupledConfig(), seed=0)
    with pytest.raises(LtrayError, match="epochs"):
        run_decoupled("lws", head, *args, DecoupledConfig(epochs=0), seed=0)
    with pytest.raises(LtrayError, match="tau_grid"):
        run_decoupled("tau_norm", head, *args, DecoupledConfig(tau_grid=[]), seed=0)
    with pytest.raises(LtrayError, match="tau_grid"):
        run_decoupled("tau_norm", head, *args, DecoupledConfig(tau_grid=[-1.0, 1.0]), seed=0)
    with pytest.raises(LtrayError, match="--val-per-class N, or give loss.decoupled.tau"):
        run_decoupled(
            "tau_norm", head, train_x, train_y, val_x[:0], val_y[:0], counts, DecoupledConfig(), 0
        )
    with pytest.raises(LtrayError, match="class counts"):
        run_decoupled("crt", head, train_x, train_y, val_x, val_y, counts[:3], DecoupledConfig(), 0)


def test_a_given_tau_is_applied_without_any_selection():
    head = LinearHead(4, 4, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.diag(torch.tensor([8.0, 4.0, 2.0, 1.0])))
    empty_x, empty_y = torch.empty(0, 4), torch.empty(0, dtype=torch.long)
    cfg = DecoupledConfig(tau=0.5)
    new_head, info = run_decoupled(
        "tau_norm", head, empty_x, empty_y, empty_x, empty_y, [8, 4, 2, 1], cfg, seed=0
    )
    assert info["tau"] == 0.5 and "val_acc_by_tau" not in info
    torch.testing.assert_close(new_head.weight, torch.diag(torch.tensor([8.0, 4, 2, 1]) ** 0.5))
