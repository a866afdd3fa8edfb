"""Backbones, heads and build_model: shapes, registries, tau-norm, no downloads."""

import pytest
import torch

from ltray.config import ModelConfig
from ltray.errors import LtrayError
from ltray.models import (
    HEADS,
    MODELS,
    CosineHead,
    LinearHead,
    ModelOutput,
    build_head,
    build_model,
    tau_normalized,
)
from ltray.models.resnet_cifar import resnet32

FEATURE_DIMS = {"resnet32": 64, "resnet10": 512, "resnet50": 2048, "resnext50_32x4d": 2048}


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_model_maps_images_to_logits_and_features(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch), num_classes=7)
    size = 32 if arch == "resnet32" else 64
    out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 7)
    assert out.features.shape == (2, model.feature_dim)
    assert model.feature_dim == FEATURE_DIMS[arch]
    assert model.head.weight.shape == (7, model.feature_dim)
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_every_registered_model_has_a_known_feature_dim():
    assert set(MODELS.names()) == set(FEATURE_DIMS)


def test_resnet32_matches_the_reference_architecture():
    model = build_model(ModelConfig(arch="resnet32"), num_classes=10)
    # the CIFAR ResNet-32 of He et al. / LDAM-DRW (option A shortcuts): 0.46M parameters
    assert sum(p.numel() for p in model.parameters()) == 464_154
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 5 * 2  # stem + 15 blocks of two; option A adds none
    assert {c.out_channels for c in convs} == {16, 32, 64}


def test_resnet32_option_b_uses_projection_shortcuts():
    backbone = resnet32(shortcut="B")
    out = backbone(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64)
    one_by_one = [m for m in backbone.modules() if getattr(m, "kernel_size", None) == (1, 1)]
    assert len(one_by_one) == 2  # one per resolution change


@pytest.mark.parametrize("name", HEADS.names())
@pytest.mark.parametrize("bias", [True, False])
def test_every_head_maps_features_to_class_scores(name, bias):
    head = build_head(name, feature_dim=16, num_classes=5, bias=bias)
    scores = head(torch.randn(3, 16))
    assert scores.shape == (3, 5)
    assert head.weight.shape == (5, 16)
    assert head.kind == name


def test_linear_head_bias_is_switchable():
    assert build_head("linear", 8, 3, bias=True).bias is not None
    assert build_head("linear", 8, 3, bias=False).bias is None


def test_cosine_head_returns_cosines_invariant_to_scale():
    torch.manual_seed(0)
    head = CosineHead(16, 5)
    features = torch.randn(4, 16)
    cos = head(features)
    assert cos.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(head(3.0 * features), cos)
    expected = (features / features.norm(dim=1, keepdim=True)) @ (
        head.weight / head.weight.norm(dim=1, keepdim=True)
    ).T
    torch.testing.assert_close(cos, expected)


def test_build_model_head_override_wins_over_the_config():
    model = build_model(ModelConfig(arch="resnet32", head="linear"), 4, head="cosine")
    assert isinstance(model.head, CosineHead)
    model = build_model(ModelConfig(arch="resnet32", head="cosine", bias=False), 4)
    assert isinstance(model.head, CosineHead)


def test_tau_normalized_rescales_rows_drops_the_bias_and_keeps_the_original():
    torch.manual_seed(0)
    head = LinearHead(6, 4)
    before = head.weight.detach().clone()
    x = torch.randn(5, 6)
    torch.testing.assert_close(tau_normalized(head, 0.0)(x), x @ before.T)
    unit = tau_normalized(head, 1.0)
    torch.testing.assert_close(unit.weight.norm(dim=1), torch.ones(4))
    half = tau_normalized(head, 0.5)
    norms = before.norm(dim=1, keepdim=True)
    torch.testing.assert_close(half.weight, before / norms.sqrt())
    torch.testing.assert_close(half.bias, torch.zeros(4))
    torch.testing.assert_close(head.weight, before)  # the input head is untouched
    assert head.bias.abs().sum() > 0
    no_bias = LinearHead(6, 4, bias=False)
    torch.testing.assert_close(tau_normalized(no_bias, 0.0)(x), no_bias(x))


def test_tau_normalized_refuses_other_heads_and_negative_tau():
    with pytest.raises(LtrayError, match="linear head"):
        tau_normalized(CosineHead(4, 3), 1.0)
    with pytest.raises(LtrayError, match="tau"):
        tau_normalized(LinearHead(4, 3), -0.5)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(LtrayError, match="resnet32"):
        build_model(ModelConfig(arch="resnet33"), 10)
    with pytest.raises(LtrayError, match="cosine, linear"):
        build_head("cosinus", 8, 3)
    with pytest.raises(LtrayError, match="num_classes"):
        build_model(ModelConfig(), 1)


def test_the_cosine_head_computes_in_fp32_under_bf16_autocast():
    from ltray.models import CosineHead

    torch.manual_seed(0)
    head = CosineHead(64, 10)
    features = torch.randn(32, 64)
    expected = head(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(features.bfloat16())  # a bf16 backbone's features
    assert got.dtype == torch.float32
    # only the features' own bf16 rounding remains: cosines within ~2^-8 of fp32, where a bf16
    # Gram would add its own 2^-8 rounding of each cosine on top
    torch.testing.assert_close(got, expected, rtol=0, atol=8e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact = head(features)
    torch.testing.assert_close(exact, expected, rtol=0, atol=0)
