"""LDAM-DRW: margins proportional to n^(-1/4), deferred re-weighting at drw_epoch."""

import pytest
import torch

from ltray.config import LossConfig
from ltray.losses import build_loss
from ltray.models import ModelOutput


def ldam_reference(cos, target, counts, max_m, s, weights):
    """Cao et al.: CE(s * (z - m_y 1_y)), weighted mean with per-class weights (float64)."""
    m = torch.tensor([n**-0.25 for n in counts], dtype=torch.float64)
    m = m * max_m / m.max()
    z = cos.double().clone()
    for i, y in enumerate(target):
        z[i, y] -= m[y]
    z = s * z
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
    w = weights[target]
    return -(w * log_p[torch.arange(len(target)), target]).sum() / w.sum()


def effective_weights(counts, beta):
    w = torch.tensor([(1 - beta) / (1 - beta**n) for n in counts], dtype=torch.float64)
    return w / w.sum() * len(counts)


@pytest.fixture
def cosine_head():
    from types import SimpleNamespace

    return SimpleNamespace(kind="cosine", weight=torch.zeros(5, 6))


def test_margins_follow_n_to_the_minus_quarter(counts):
    crit = build_loss(LossConfig(name="ldam_drw", ldam_max_margin=0.4), counts)
    margins = crit.margins.double()
    n = torch.tensor(counts, dtype=torch.float64)
    products = margins * n.pow(0.25)
    torch.testing.assert_close(products, products[0].expand(len(counts)))
    assert margins.max().item() == pytest.approx(0.4)
    assert margins.argmax().item() == len(counts) - 1  # the rarest class


def test_ldam_matches_the_reference_before_and_after_drw(counts, batch, cosine_head):
    logits, features, target = batch
    cos = torch.tanh(logits)  # cosine-like values in (-1, 1)
    cfg = LossConfig(name="ldam_drw", drw_epoch=10, drw_beta=0.999, ldam_scale=30.0)
    crit = build_loss(cfg, counts)
    assert crit.head_kind == "cosine"
    out = ModelOutput(cos, features)

    crit.set_epoch(9.99)
    assert crit.class_weights() is None
    ones = torch.ones(len(counts), dtype=torch.float64)
    expected = ldam_reference(cos, target, counts, 0.5, 30.0, ones)
    torch.testing.assert_close(crit(out, target, cosine_head).total, expected)

    crit.set_epoch(10.0)
    weights = effective_weights(counts, 0.999)
    torch.testing.assert_close(crit.class_weights().double(), weights, rtol=1e-6, atol=1e-7)
    expected = ldam_reference(cos, target, counts, 0.5, 30.0, weights)
    torch.testing.assert_close(crit(out, target, cosine_head).total, expected, rtol=1e-6, atol=1e-7)


def test_drw_weights_favour_rare_classes(counts):
    crit = build_loss(LossConfig(name="ldam_drw", drw_epoch=0), counts)
    weights = crit.class_weights()
    assert torch.all(weights[1:] > weights[:-1])
    assert weights.sum().item() == pytest.approx(len(counts))


def test_ldam_passes_gradcheck(counts, cosine_head):
    crit = build_loss(LossConfig(name="ldam_drw", drw_epoch=1, ldam_scale=5.0), counts)
    crit.set_epoch(2)
    cos = torch.rand(6, 5, dtype=torch.float64).mul(2).sub(1).requires_grad_()
    target = torch.tensor([0, 1, 2, 3, 4, 4])
    assert torch.autograd.gradcheck(
        lambda c: crit(ModelOutput(c, c), target, cosine_head).total, (cos,)
    )
