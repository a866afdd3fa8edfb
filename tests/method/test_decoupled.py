"""The decoupled second stage: cRT and LWS re-train a biased head on class-balanced batches
through a frozen backbone; tau-norm picks tau on val."""

import pytest
import torch
import torch.nn.functional as F

from ltray.config import DecoupledConfig, ModelConfig, ScalingConfig
from ltray.errors import LtrayError
from ltray.models import CosineHead, LinearHead
from ltray.models.classifier import Classifier
from ltray.train.classifier_stage import retrain_classifier
from ltray.train.decoupled import tau_norm
from ltray.train.device import Placement

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


class Features(torch.nn.Module):
    """A stand-in backbone: the 'images' are already the features."""

    feature_dim = D

    def forward(self, x):
        return x


def class_balanced_batches(labels, num_samples, batch_size, generator):
    """A class uniformly, then one of its samples: what the reader's class_balanced sampler
    draws, here over an in-memory tensor."""
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    for begin in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - begin)
        which = torch.randint(len(classes), (size,), generator=generator)
        offset = (torch.rand(size, generator=generator) * counts[which]).long()
        yield order[starts[which] + offset]


def retrain(method, head, train_x, train_y, cfg, seed=0):
    placement = Placement.create(torch.device("cpu"), ScalingConfig(), ModelConfig())
    model = Classifier(Features(), head)
    gen = torch.Generator().manual_seed(100 + seed)
    steps = -(-len(train_y) // cfg.batch_size)

    def epoch_batches(epoch):
        for idx in class_balanced_batches(train_y, len(train_y), cfg.batch_size, gen):
            yield {"image": train_x[idx], "label": train_y[idx]}

    return retrain_classifier(
        method, model, epoch_batches, steps, lambda x: x, placement, cfg, seed, False
    )


@pytest.mark.parametrize("method", ["crt", "lws", "tau_norm"])
def test_second_stage_improves_balanced_accuracy(setup, method):
    counts, (train_x, train_y), (val_x, val_y), (test_x, test_y), head = setup
    before = balanced_accuracy(head, test_x, test_y)
    cfg = DecoupledConfig(epochs=30, lr=0.2, batch_size=128)
    weight_before = head.weight.detach().clone()
    if method == "tau_norm":
        new_head, info = tau_norm(head, val_x, val_y, cfg)
        assert 0.0 <= info["val_acc"] <= 1.0
    else:
        new_head, info = retrain(method, head, train_x, train_y, cfg)
        assert info["epochs"] == 30 and info["train_loss"] > 0
    after = balanced_accuracy(new_head, test_x, test_y)
    assert after > before + 0.015, (method, before, after)
    assert isinstance(new_head, LinearHead)
    torch.testing.assert_close(head.weight.detach(), weight_before)  # input untouched
    if method == "lws":  # one scale per class, folded into the rows and the bias
        scales = new_head.weight.detach()[:, 0] / weight_before[:, 0]
        torch.testing.assert_close(new_head.weight.detach(), weight_before * scales[:, None])
        torch.testing.assert_close(new_head.bias.detach(), head.bias.detach() * scales)


@pytest.mark.parametrize("method", ["crt", "lws"])
def test_second_stage_is_deterministic_given_the_seed(setup, method):
    counts, (train_x, train_y), _, _, head = setup
    cfg = DecoupledConfig(epochs=2, lr=0.2, batch_size=128)
    runs = [retrain(method, head, train_x, train_y, cfg, seed=s)[0] for s in (3, 3, 4)]
    assert torch.equal(runs[0].weight, runs[1].weight)
    assert not torch.equal(runs[0].weight, runs[2].weight)


def test_the_backbone_stays_frozen_in_eval_mode_and_untouched():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.BatchNorm1d(D))
    backbone.feature_dim = D
    head = LinearHead(D, C)
    model = Classifier(backbone, head)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    placement = Placement.create(torch.device("cpu"), ScalingConfig(), ModelConfig())
    x, y = torch.randn(64, D) * 5 + 3, torch.arange(64) % C

    def epoch_batches(epoch):
        yield {"image": x, "label": y}

    cfg = DecoupledConfig(epochs=2, lr=0.2)
    new_head, _ = retrain_classifier(
        "crt", model, epoch_batches, 1, lambda t: t, placement, cfg, 0, False
    )
    for key, value in model.backbone.state_dict().items():  # BN running stats included
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert model.backbone[0].weight.requires_grad  # the caller's model is left as it was
    assert not torch.equal(new_head.weight, head.weight)


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
    cfg = DecoupledConfig()  # grid 0.0, 0.1, ..., 2.0
    new_head, info = tau_norm(head, val_x, val_y, cfg)
    assert info["tau"] == pytest.approx(tau_star)
    assert info["val_acc"] == 1.0
    assert info["val_acc_by_tau"][0.6] < 1.0 and info["val_acc_by_tau"][0.8] < 1.0
    torch.testing.assert_close(new_head.weight, torch.diag(norms ** (1 - tau_star)))


def test_bad_arguments_are_clear_errors(setup):
    counts, (train_x, train_y), (val_x, val_y), _, head = setup
    with pytest.raises(LtrayError, match="crt, lws"):
        retrain("ncm", head, train_x, train_y, DecoupledConfig())
    with pytest.raises(LtrayError, match="linear head"):
        retrain("crt", CosineHead(D, C), train_x, train_y, DecoupledConfig())
    with pytest.raises(LtrayError, match="epochs"):
        retrain("lws", head, train_x, train_y, DecoupledConfig(epochs=0))
    with pytest.raises(LtrayError, match="tau_grid"):
        tau_norm(head, val_x, val_y, DecoupledConfig(tau_grid=[]))
    with pytest.raises(LtrayError, match="tau_grid"):
        tau_norm(head, val_x, val_y, DecoupledConfig(tau_grid=[-1.0, 1.0]))
    with pytest.raises(LtrayError, match="--val-per-class N, or give loss.decoupled.tau"):
        tau_norm(head, val_x[:0], val_y[:0], DecoupledConfig())
    with pytest.raises(LtrayError, match="linear head"):
        tau_norm(CosineHead(D, C), val_x, val_y, DecoupledConfig())


def test_a_given_tau_is_applied_without_any_selection():
    head = LinearHead(4, 4, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.diag(torch.tensor([8.0, 4.0, 2.0, 1.0])))
    empty_x, empty_y = torch.empty(0, 4), torch.empty(0, dtype=torch.long)
    cfg = DecoupledConfig(tau=0.5)
    new_head, info = tau_norm(head, empty_x, empty_y, cfg)
    assert info["tau"] == 0.5 and "val_acc_by_tau" not in info
    torch.testing.assert_close(new_head.weight, torch.diag(torch.tensor([8.0, 4, 2, 1]) ** 0.5))
