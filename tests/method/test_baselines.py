"""The softmax baselines against float64 references written from their formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltray.config import LossConfig
from ltray.losses import build_loss
from ltray.losses.baselines import WeightBalancing
from ltray.models import LinearHead, ModelOutput


def softmax_ce(z, y):
    """-log(exp(z_y) / sum_j exp(z_j)) per sample, float64, from the definition."""
    z = z.double()
    return torch.stack([-(z[i, y[i]] - torch.log(torch.exp(z[i]).sum())) for i in range(len(y))])


def run(name, counts, batch, head, **cfg):
    crit = build_loss(LossConfig(name=name, **cfg), counts)
    logits, features, target = batch
    return crit, crit(ModelOutput(logits, features), target, head)


def test_ce_matches_the_formula(counts, batch, linear_head):
    _, res = run("ce", counts, batch, linear_head)
    logits, _, target = batch
    torch.testing.assert_close(res.total, softmax_ce(logits, target).mean())
    assert set(res.terms) == {"ce"}


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_matches_the_formula(counts, batch, linear_head, gamma):
    _, res = run("focal", counts, batch, linear_head, gamma=gamma)
    logits, _, target = batch
    p = torch.exp(-softmax_ce(logits, target))
    expected = (-((1 - p) ** gamma) * torch.log(p)).mean()
    torch.testing.assert_close(res.total, expected)


def test_focal_with_gamma_zero_is_ce(counts, batch, linear_head):
    _, focal = run("focal", counts, batch, linear_head, gamma=0.0)
    _, ce = run("ce", counts, batch, linear_head)
    torch.testing.assert_close(focal.total, ce.total)


def test_class_balanced_matches_the_formula(counts, batch, linear_head):
    beta = 0.99
    _, res = run("class_balanced", counts, batch, linear_head, beta=beta)
    logits, _, target = batch
    w = torch.tensor([(1 - beta) / (1 - beta**n) for n in counts], dtype=torch.float64)
    w = w / w.sum() * len(counts)
    expected = (w[target] * softmax_ce(logits, target)).mean()
    torch.testing.assert_close(res.total, expected, rtol=1e-6, atol=1e-7)


def test_balanced_softmax_matches_the_formula(counts, batch, linear_head):
    _, res = run("balanced_softmax", counts, batch, linear_head)
    logits, _, target = batch
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    expected = softmax_ce(logits + torch.log(prior), target).mean()
    torch.testing.assert_close(res.total, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tau", [0.5, 1.5])
def test_logit_adjustment_matches_the_formula(counts, batch, linear_head, tau):
    _, res = run("logit_adjustment", counts, batch, linear_head, tau=tau)
    logits, _, target = batch
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    expected = softmax_ce(logits + tau * torch.log(prior), target).mean()
    torch.testing.assert_close(res.total, expected, rtol=1e-6, atol=1e-7)


def test_balanced_softmax_with_a_uniform_prior_is_ce(batch, linear_head):
    uniform = [30] * 5
    _, bs = run("balanced_softmax", uniform, batch, linear_head)
    _, ce = run("ce", uniform, batch, linear_head)
    torch.testing.assert_close(bs.total, ce.total)


def test_logit_adjustment_with_tau_zero_is_ce(counts, batch, linear_head):
    _, la = run("logit_adjustment", counts, batch, linear_head, tau=0.0)
    _, ce = run("ce", counts, batch, linear_head)
    torch.testing.assert_close(la.total, ce.total, rtol=0, atol=0)


def test_prior_losses_predict_with_the_plain_logits(counts, batch):
    logits, features, _ = batch
    for name in ("balanced_softmax", "logit_adjustment"):
        crit = build_loss(LossConfig(name=name), counts)
        assert crit.predict_logits(ModelOutput(logits, features)) is logits


@pytest.mark.parametrize(
    "name", ["ce", "focal", "class_balanced", "balanced_softmax", "logit_adjustment"]
)
def test_baselines_pass_gradcheck(counts, linear_head, name):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    crit = build_loss(LossConfig(name=name, gamma=1.5, beta=0.99), counts)
    assert torch.autograd.gradcheck(
        lambda z: crit(ModelOutput(z, z), target, linear_head).total, (logits,)
    )


def test_weight_balancing_is_ce_with_maxnorm_after_each_step(counts, batch, linear_head):
    crit, res = run("weight_balancing", counts, batch, linear_head, max_norm=1.0)
    logits, _, target = batch
    torch.testing.assert_close(res.total, softmax_ce(logits, target).mean())
    assert isinstance(crit, WeightBalancing)

    head = LinearHead(4, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4, 0, 0], [0.3, 0.4, 0, 0], [0, 0, 0, 1.0]]))
        head.bias.fill_(7.0)
    model = torch.nn.Module()
    model.head = head
    wrapped = torch.nn.Module()  # like DistributedDataParallel: the model under .module
    wrapped.module = model
    crit.after_step(wrapped)
    expected = torch.tensor([[0.6, 0.8, 0, 0], [0.3, 0.4, 0, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(head.weight.detach(), expected)
    torch.testing.assert_close(head.bias.detach(), torch.full((3,), 7.0))


def test_losses_run_in_fp32_under_bf16_autocast(counts):
    logits = torch.randn(8, 5).bfloat16()
    target = torch.arange(8) % 5
    for name in ("ce", "focal", "class_balanced", "balanced_softmax", "logit_adjustment"):
        crit = build_loss(LossConfig(name=name), counts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res = crit(ModelOutput(logits, logits), target, None)
        assert res.total.dtype == torch.float32
        plain = crit(ModelOutput(logits.float(), logits.float()), target, None)
        torch.testing.assert_close(res.total, plain.total)
    assert math.isfinite(res.total.item())


def test_ce_reference_agrees_with_torch():
    z = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(softmax_ce(z, y), F.cross_entropy(z, y, reduction="none"))
