"""ArcFace's additive angular margin and its fallback past pi."""

import math

import pytest
import torch

from ltray.losses.margin import AngularMarginCE, additive_angular_margin


def test_target_column_becomes_cos_theta_plus_m():
    gen = torch.Generator().manual_seed(0)
    cos = torch.rand(8, 4, dtype=torch.float64, generator=gen) * 1.6 - 0.8
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    m = 0.3
    out = additive_angular_margin(cos, target, m)
    for i, y in enumerate(target.tolist()):
        theta = math.acos(cos[i, y].item())
        assert theta + m < math.pi
        assert out[i, y].item() == pytest.approx(math.cos(theta + m), abs=1e-12)
        others = [j for j in range(4) if j != y]
        torch.testing.assert_close(out[i, others], cos[i, others])


def test_fallback_past_pi_is_insightface_easy_margin_false():
    m = 0.3
    thetas = torch.tensor([math.pi - 0.2, math.pi - 0.05, math.pi - 1e-4], dtype=torch.float64)
    cos = torch.stack([torch.cos(thetas), torch.zeros(3, dtype=torch.float64)], dim=1)
    target = torch.zeros(3, dtype=torch.long)
    out = additive_angular_margin(cos, target, m)[:, 0]
    expected = torch.cos(thetas) - m * math.sin(math.pi - m)
    torch.testing.assert_close(out, expected)
    # without the fallback the target logit would rise again past pi: a reward for a worse angle
    assert torch.all(torch.cos(thetas + m) > out)


def test_target_logit_decreases_monotonically_in_theta_across_the_switch():
    m = 0.5
    thetas = torch.linspace(0.01, math.pi - 0.01, 2001, dtype=torch.float64)
    cos = torch.stack([torch.cos(thetas), torch.zeros_like(thetas)], dim=1)
    out = additive_angular_margin(cos, torch.zeros(len(thetas), dtype=torch.long), m)[:, 0]
    assert torch.all(out[1:] < out[:-1])


def test_zero_margin_is_the_identity():
    cos = torch.rand(5, 3, dtype=torch.float64) * 2 - 1
    target = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(additive_angular_margin(cos, target, 0.0), cos, rtol=0, atol=0)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_margin_ce_passes_gradcheck_in_both_branches(learn_scale):
    crit = AngularMarginCE(4.0, learn_scale, torch.tensor([0.1, -0.2, 0.0])).double()
    # rows 0-2 in the cos(theta + m) branch, rows 3-4 past pi (the fallback)
    cos = torch.tensor(
        [
            [0.5, -0.2, 0.1],
            [0.1, 0.3, -0.7],
            [-0.4, 0.2, 0.8],
            [-0.99, 0.1, 0.2],
            [0.3, -0.98, 0.0],
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    target = torch.tensor([0, 1, 2, 0, 1])
    inputs = (cos, crit.log_scale) if learn_scale else (cos,)

    def loss(c, *log_scale):  # gradcheck perturbs crit.log_scale itself in place
        return crit(c, target, 0.4)

    assert torch.autograd.gradcheck(loss, inputs)


def test_a_learned_scale_stays_positive_whatever_the_step():
    crit = AngularMarginCE(4.0, True, None)
    cos = torch.tensor([[0.9, -0.5], [-0.3, 0.6]])
    crit(cos, torch.tensor([1, 0]), 0.0).backward()  # wrong-class cosines: the loss wants s -> 0
    assert crit.log_scale.grad.item() > 0
    with torch.no_grad():  # a step far larger than the scale itself, as a big lr would take
        crit.log_scale -= 100.0 * crit.log_scale.grad.sign()
    assert crit.scale.item() > 0 and torch.isfinite(crit(cos, torch.tensor([1, 0]), 0.0))
