"""Ring and hinge feature-norm terms; the learned radius and its one-time initialisation."""

import pytest
import torch

from ltray.errors import LtrayError
from ltray.losses.feature_norm import FeatureNormLoss


def norms_of(features):
    return torch.sqrt((features.double() ** 2).sum(dim=1))


@pytest.fixture
def features():
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(16, 8, dtype=torch.float64, generator=gen)
        * torch.linspace(0.1, 2, 16)[:, None].double()
    )


def test_ring_with_a_fixed_radius_matches_the_formula(features):
    loss = FeatureNormLoss("ring", 2.0)(features)
    expected = ((norms_of(features) - 2.0) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_hinge_only_lifts_norms_below_the_radius(features):
    loss = FeatureNormLoss("hinge", 3.0)(features)
    n = norms_of(features)
    expected = torch.where(n < 3.0, (3.0 - n) ** 2, torch.zeros_like(n)).mean()
    torch.testing.assert_close(loss, expected)
    assert FeatureNormLoss("hinge", 0.01)(features).item() == 0.0


def test_hinge_without_radius_uses_one(features):
    crit = FeatureNormLoss("hinge", None)
    assert list(crit.parameters()) == []
    torch.testing.assert_close(crit(features), FeatureNormLoss("hinge", 1.0)(features))


def test_learned_radius_starts_at_the_first_batch_mean_and_only_once(features):
    crit = FeatureNormLoss("ring", None)
    assert [p.shape for p in crit.parameters()] == [torch.Size([])]
    loss = crit(features)
    mean = norms_of(features).mean()
    assert crit.radius.item() == pytest.approx(mean.item(), rel=1e-6)
    torch.testing.assert_close(loss, ((norms_of(features) - crit.radius) ** 2).mean())
    crit(features * 10)  # a second batch does not move R
    assert crit.radius.item() == pytest.approx(mean.item(), rel=1e-6)


def test_learned_radius_is_not_reinitialised_after_a_resume(features):
    trained = FeatureNormLoss("ring", None)
    trained(features)
    with torch.no_grad():
        trained.radius.fill_(5.0)
    resumed = FeatureNormLoss("ring", None)
    resumed.load_state_dict(trained.state_dict())
    resumed(features)
    assert resumed.radius.item() == 5.0


@pytest.mark.parametrize("kind,radius", [("ring", 1.5), ("hinge", 2.5), ("ring", None)])
def test_norm_terms_pass_gradcheck(features, kind, radius):
    crit = FeatureNormLoss(kind, radius).double()
    crit(features)  # initialise a learned radius
    inputs = (features.clone().requires_grad_(),)
    if radius is None:
        inputs = (*inputs, crit.radius)  # gradcheck perturbs the parameter itself
    assert torch.autograd.gradcheck(lambda f, *r: crit(f), inputs)


def test_bad_kind_or_radius_is_a_clear_error():
    with pytest.raises(LtrayError, match="ring, hinge"):
        FeatureNormLoss("circle", 1.0)
    with pytest.raises(LtrayError, match="radius"):
        FeatureNormLoss("ring", -1.0)
