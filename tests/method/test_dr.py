"""The seed paper's loss: its reference formula, identities, switches and schedules."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ltray.config import LossConfig, NormConfig, UniformityConfig
from ltray.errors import LtrayError
from ltray.losses import build_loss
from ltray.losses.dr import DrLoss
from ltray.models import ModelOutput

C, D = 5, 6


def cosine_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(10, D, dtype=torch.float64, generator=gen) * 2
    weight = torch.randn(C, D, dtype=torch.float64, generator=gen)
    return features, weight


def cosines(features, weight):
    return F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T


def head_of(weight):
    return SimpleNamespace(kind="cosine", weight=weight)


def dr_reference(features, weight, target, counts, m, s, lam_u, lam_n, radius, prior_tau):
    """L = CE(s cos(theta + m 1_y) + tau log prior) + lam_u mean_{i!=j} 1/||u_i - u_j||^2
    + lam_n mean (||f|| - R)^2, written out in float64 (mhe_s2, ring with a fixed R)."""
    cos = cosines(features, weight)
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    ce = []
    for i, y in enumerate(target.tolist()):
        theta = torch.arccos(cos[i])
        z = s * torch.cos(theta + m * F.one_hot(torch.tensor(y), C)) + prior_tau * prior.log()
        ce.append(-(z[y] - torch.log(torch.exp(z).sum())))
    u = F.normalize(weight, dim=1)
    energy = torch.stack(
        [1 / ((u[i] - u[j]) ** 2).sum() for i in range(C) for j in range(C) if i != j]
    ).mean()
    ring = ((features.norm(dim=1) - radius) ** 2).mean()
    return torch.stack(ce).mean() + lam_u * energy + lam_n * ring, energy, ring


def make_dr(counts, **overrides):
    args = dict(
        margin=0.3,
        scale=8.0,
        uniformity=UniformityConfig(kind="mhe_s2", weight=0.1, block_rows=2),
        norm=NormConfig(kind="ring", weight=0.05, radius=1.5),
    )
    args.update(overrides)
    return DrLoss(counts, **args)


@pytest.mark.parametrize("prior_tau", [0.0, 0.7])
def test_dr_matches_the_reference(counts, prior_tau):
    features, weight = cosine_inputs()
    target = torch.arange(10) % C
    crit = make_dr(counts, prior_tau=prior_tau)
    res = crit(ModelOutput(cosines(features, weight), features), target, head_of(weight))
    total, energy, ring = dr_reference(
        features, weight, target, counts, 0.3, 8.0, 0.1, 0.05, 1.5, prior_tau
    )
    torch.testing.assert_close(res.total, total, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(res.terms["uniformity"], energy)
    torch.testing.assert_close(res.terms["norm"], ring)
    assert set(res.terms) == {"margin_ce", "uniformity", "norm"}
    assert crit.head_kind == "cosine"


def test_dr_with_zero_margin_and_weights_is_ce_on_scaled_cosines(counts):
    features, weight = cosine_inputs(1)
    target = torch.arange(10) % C
    cos = cosines(features, weight)
    crit = build_loss(
        LossConfig(
            name="dr",
            margin=0.0,
            scale=12.0,
            uniformity=UniformityConfig(weight=0.0),
            norm=NormConfig(weight=0.0),
        ),
        counts,
    )
    res = crit(ModelOutput(cos, features), target, head_of(weight))
    torch.testing.assert_close(res.total, F.cross_entropy(12.0 * cos, target), rtol=0, atol=1e-12)
    assert set(res.terms) == {"margin_ce"}


def test_terms_switch_off_by_kind_none(counts):
    features, weight = cosine_inputs(2)
    target = torch.arange(10) % C
    crit = make_dr(
        counts, uniformity=UniformityConfig(kind="none"), norm=NormConfig(kind="none", weight=1.0)
    )
    res = crit(ModelOutput(cosines(features, weight), features), target, head_of(weight))
    assert set(res.terms) == {"margin_ce"}
    assert list(crit.parameters()) == []


def test_dr_passes_gradcheck(counts):
    features, weight = cosine_inputs(3)
    target = torch.arange(10) % C
    crit = make_dr(counts, prior_tau=0.5).double()

    def loss(f, w):
        return crit(ModelOutput(cosines(f, w), f), target, head_of(w)).total

    inputs = (features.requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(loss, inputs)


def test_margin_ramps_in_over_the_warmup(counts):
    crit = make_dr(counts, margin=0.4, margin_warmup_epochs=4.0)
    for epoch, expected in [(0.0, 0.0), (1.0, 0.1), (2.5, 0.25), (4.0, 0.4), (50.0, 0.4)]:
        crit.set_epoch(epoch)
        assert crit.current_margin == pytest.approx(expected)
    features, weight = cosine_inputs(4)
    target = torch.arange(10) % C
    crit.set_epoch(2.0)
    ramped = crit(ModelOutput(cosines(features, weight), features), target, head_of(weight))
    half = make_dr(counts, margin=0.2)
    fixed = half(ModelOutput(cosines(features, weight), features), target, head_of(weight))
    torch.testing.assert_close(ramped.total, fixed.total)


def test_learned_scale_and_radius_are_parameters_of_the_loss(counts):
    cfg = LossConfig(name="dr", learn_scale=True, scale=10.0, norm=NormConfig(radius=None))
    crit = build_loss(cfg, counts)
    params = dict(crit.named_parameters())
    assert set(params) == {"margin_ce.log_scale", "feature_norm.radius"}
    assert crit.margin_ce.scale.item() == pytest.approx(10.0, rel=1e-6)  # exp(log 10) in float32
    features, weight = cosine_inputs(5)
    res = crit(
        ModelOutput(cosines(features, weight).float(), features.float()),
        torch.arange(10) % C,
        head_of(weight.float()),
    )
    res.total.backward()
    assert params["margin_ce.log_scale"].grad is not None
    assert params["feature_norm.radius"].grad is not None


def test_prediction_is_the_scaled_cosines_without_margin_or_prior(counts):
    crit = make_dr(counts, prior_tau=1.0)
    cos = torch.rand(3, C)
    torch.testing.assert_close(crit.predict_logits(ModelOutput(cos, cos)), 8.0 * cos)
    assert crit.output_kind == "scaled cosines"


def test_dr_runs_in_fp32_under_bf16_autocast(counts):
    features, weight = cosine_inputs(6)
    features, weight = features.float(), weight.float()
    target = torch.arange(10) % C
    crit = make_dr(counts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos = F.linear(F.normalize(features), F.normalize(weight))
        assert cos.dtype == torch.bfloat16
        res = crit(ModelOutput(cos, features.bfloat16()), target, head_of(weight))
    assert res.total.dtype == torch.float32
    plain = crit(ModelOutput(cos.float(), features.bfloat16().float()), target, head_of(weight))
    torch.testing.assert_close(res.total, plain.total, rtol=1e-3, atol=1e-4)


def test_dr_refuses_a_linear_head_and_wrong_widths(counts):
    crit = make_dr(counts)
    features, weight = cosine_inputs(7)
    out = ModelOutput(cosines(features, weight), features)
    with pytest.raises(LtrayError, match="cosine head"):
        crit(out, torch.zeros(10, dtype=torch.long), SimpleNamespace(kind="linear", weight=weight))
    with pytest.raises(LtrayError, match="5 classes"):
        crit(ModelOutput(out.logits[:, :3], features), torch.zeros(10, dtype=torch.long), None)


@pytest.mark.parametrize("margin", [-0.1, math.pi / 2, 2.0])
def test_dr_refuses_a_margin_outside_zero_to_half_pi(counts, margin):
    with pytest.raises(LtrayError, match=r"loss.margin"):
        make_dr(counts, margin=margin)


def test_dr_refuses_negative_weights_and_unknown_kinds_built_without_validation(counts):
    bad_weight = UniformityConfig.model_construct(kind="mhe_s2", weight=-1.0, t=2.0, block_rows=8)
    with pytest.raises(LtrayError, match="uniformity.weight"):
        make_dr(counts, uniformity=bad_weight)
    bad_kind = UniformityConfig.model_construct(kind="mhe_s9", weight=1.0, t=2.0, block_rows=8)
    with pytest.raises(LtrayError, match="uniformity.kind"):
        make_dr(counts, uniformity=bad_kind)
    bad_norm = NormConfig.model_construct(kind="ring", weight=-0.5, radius=1.0)
    with pytest.raises(LtrayError, match="norm.weight"):
        make_dr(counts, norm=bad_norm)
    with pytest.raises(LtrayError, match="prior_tau"):
        make_dr(counts, prior_tau=-1.0)


def test_the_gram_precision_is_the_configured_one(counts):
    features, weight = cosine_inputs(7)
    features, weight = features.float(), weight.float()
    target = torch.arange(10) % C
    grads = {}
    for gram in ("auto", "fp32", "bf16x3", "bf16"):
        crit = make_dr(
            counts, uniformity=UniformityConfig(kind="mhe_s2", weight=1.0, gram_dtype=gram)
        )
        w = weight.clone().requires_grad_()
        cos = F.linear(F.normalize(features), F.normalize(w))
        crit(ModelOutput(cos, features), target, head_of(w)).total.backward()
        grads[gram] = w.grad
    assert torch.equal(grads["auto"], grads["fp32"])  # auto on the CPU
    for gram in ("bf16x3", "bf16"):
        assert not torch.equal(grads["fp32"], grads[gram])  # each really ran, only when asked
    # 8-bit cosines cost well-spread rows ~0.5% of the gradient: direction kept to 0.999
    assert F.cosine_similarity(grads["bf16"].flatten(), grads["fp32"].flatten(), 0) >= 0.999
    # bf16x3 keeps ~16 bits (tests/method/test_uniformity.py)
    assert F.cosine_similarity(grads["bf16x3"].flatten(), grads["fp32"].flatten(), 0) >= 1 - 1e-6
    assert F.cosine_similarity(grads["bf16"].flatten(), grads["fp32"].flatten(), 0) >= 0.999
