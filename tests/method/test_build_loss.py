"""The loss registry, build_loss, the decoupled stage-1 entries and bad configuration."""

import math

import pytest
import torch
from pydantic import ValidationError

from ltray.config import LOSS_NAMES, LossConfig, ModelConfig, NormConfig, UniformityConfig
from ltray.errors import LtrayError
from ltray.losses import LOSSES, build_loss, head_for
from ltray.losses.baselines import CrossEntropy, FocalLoss
from ltray.models import ModelOutput, build_model


def test_every_config_loss_name_is_registered():
    assert set(LOSSES.names()) == set(LOSS_NAMES)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_trains_a_model_end_to_end(name, counts):
    torch.manual_seed(0)
    crit = build_loss(LossConfig(name=name, drw_epoch=1), counts)
    head = head_for(LossConfig(name=name), ModelConfig())
    assert head == ("cosine" if name in ("dr", "ldam_drw") else "linear") == crit.head_kind
    model = build_model(ModelConfig(arch="resnet32"), len(counts), head=head)
    params = list(model.parameters()) + list(crit.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01)
    images, target = torch.randn(6, 3, 16, 16), torch.arange(6) % len(counts)
    for epoch in (0.0, 1.5):
        crit.set_epoch(epoch)
        res = crit(model(images), target, model.head)
        optimizer.zero_grad()
        res.total.backward()
        optimizer.step()
        crit.after_step(model)
        assert math.isfinite(res.total.item())
        assert res.terms and all(t.dim() == 0 and not t.requires_grad for t in res.terms.values())
    logits = crit.predict_logits(model(images))
    assert logits.shape == (6, len(counts))


@pytest.mark.parametrize("method", ["crt", "lws", "tau_norm"])
def test_decoupled_methods_return_their_stage1_loss(method, counts):
    crit = build_loss(LossConfig(name=method), counts)
    assert type(crit) is CrossEntropy
    crit = build_loss(LossConfig(name=method, decoupled={"stage1_loss": "focal"}), counts)
    assert type(crit) is FocalLoss
    assert crit.head_kind == "linear"


@pytest.mark.parametrize(
    "stage1,match",
    [("crossentropy", "unknown loss"), ("lws", "second stage"), ("dr", "cosine head")],
)
def test_bad_stage1_loss_names_the_key(counts, stage1, match):
    cfg = LossConfig(name="crt", decoupled={"stage1_loss": stage1})
    with pytest.raises(LtrayError, match=f"loss.decoupled.stage1_loss.*{match}"):
        build_loss(cfg, counts)


@pytest.mark.parametrize(
    "bad,match",
    [
        ([10, 0, 3], "class 1 has 0"),
        ([10, -2, 3], "class 1 has -2"),
        ([10, 2.5, 3], "non-integer"),
        ([10], "at least 2 classes"),
        ([], "at least 2 classes"),
    ],
)
def test_bad_class_counts_are_clear_errors(bad, match):
    for name in ("ce", "dr", "ldam_drw", "class_balanced"):
        with pytest.raises(LtrayError, match=match):
            build_loss(LossConfig(name=name), bad)


def test_logits_of_the_wrong_width_are_refused(counts):
    crit = build_loss(LossConfig(name="ce"), counts)
    with pytest.raises(LtrayError, match="built for 5 classes"):
        crit(ModelOutput(torch.zeros(2, 7), torch.zeros(2, 3)), torch.zeros(2).long(), None)


def test_unknown_registry_name_lists_the_valid_ones():
    with pytest.raises(LtrayError, match="balanced_softmax, ce, class_balanced"):
        LOSSES.get("cross_entropy")


# What config.py already rejects at the edge (pydantic), so the losses need not:
@pytest.mark.parametrize("margin", [-0.01, math.pi / 2, 3.0])
def test_config_rejects_a_margin_outside_zero_to_half_pi(margin):
    with pytest.raises(ValidationError, match="margin"):
        LossConfig(name="dr", margin=margin)


@pytest.mark.parametrize(
    "section,kwargs",
    [
        (UniformityConfig, {"weight": -0.1}),
        (UniformityConfig, {"kind": "mhe_s3"}),
        (UniformityConfig, {"block_rows": 0}),
        (NormConfig, {"weight": -1.0}),
        (NormConfig, {"kind": "circle"}),
        (NormConfig, {"radius": 0.0}),
        (LossConfig, {"name": "cross_entropy"}),
        (LossConfig, {"prior_tau": -1.0}),
        (LossConfig, {"gamma": -1.0}),
        (ModelConfig, {"head": "tau_norm"}),
    ],
)
def test_config_rejects_bad_values(section, kwargs):
    with pytest.raises(ValidationError):
        section(**kwargs)


@pytest.mark.parametrize(
    "name, needed, other", [("dr", "cosine", "linear"), ("ce", "linear", "cosine")]
)
def test_a_model_head_that_contradicts_the_loss_is_refused(name, needed, other):
    loss = LossConfig(name=name)
    assert head_for(loss, ModelConfig(head=needed)) == needed
    with pytest.raises(LtrayError) as info:
        head_for(loss, ModelConfig(head=other))
    assert str(info.value) == (
        f"model.head is {other!r}, but loss {name!r} trains a {needed} head; "
        f"drop model.head or set it to {needed!r}"
    )
