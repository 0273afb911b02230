"""Every zoo architecture honours the timm model API and its constructor arguments."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo
from zoo.measure import model_summary
from zoo.models.cifar_resnet import CifarResNet, blocks_per_stage

ARCHS = zoo.list_architectures()


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.randn(batch, c, min(h, 64), min(w, 64)) if h == w else torch.randn(batch, c, h, w)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_reaches_every_parameter(arch: str) -> None:
    model = timm.create_model(arch)
    out = model(_input(model))
    assert out.shape == (2, model.pretrained_cfg["num_classes"])
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_num_classes_in_chans_and_head_api(arch: str) -> None:
    model = timm.create_model(arch, num_classes=7, in_chans=3)
    x = torch.randn(2, 3, *model.pretrained_cfg["input_size"][1:])
    assert model(x).shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    hidden = getattr(model, "head_hidden_size", model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, hidden)
    model.reset_classifier(0)
    assert model(x).shape == (2, hidden)
    model.reset_classifier(4)
    assert model.get_classifier().out_features == 4 and model(x).shape == (2, 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_features_only_matches_feature_info(arch: str) -> None:
    model = timm.create_model(arch, features_only=True, in_chans=1).eval()
    size = max(model.feature_info.reduction()) * 4  # every stage at least 4x4, sizes divide exactly
    outs = model(torch.randn(2, 1, size, size))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert [size // o.shape[-1] for o in outs] == model.feature_info.reduction()


@pytest.mark.parametrize("arch", ARCHS)
def test_strict_state_dict_round_trip(arch: str) -> None:
    a, b = timm.create_model(arch), timm.create_model(arch)
    b.load_state_dict(a.state_dict(), strict=True)
    x = _input(a)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_cifar_resnet_sizes_match_the_papers() -> None:
    # He et al.: ResNet-20 0.27M, ResNet-56 0.85M params; ResNet-56 about 125M MACs on 32x32.
    assert model_summary(timm.create_model("resnet20", in_chans=3), (3, 32, 32))["params"] == 269_722
    r56 = model_summary(timm.create_model("resnet56", in_chans=3), (3, 32, 32))
    assert r56["params"] == 853_018
    assert 125e6 < r56["flops"] < 126e6 and r56["bops"] == 0 and r56["ops"] == r56["flops"]


def test_pruned_widths_rebuild_exact_shapes() -> None:
    inner = [8] * 3 + [20] * 3 + [33] * 3
    model = CifarResNet(depth=20, inner_widths=inner, stage_widths=(16, 32, 64))
    assert [b.conv1.out_channels for s in (model.layer1, model.layer2, model.layer3) for b in s] == inner
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "kwargs",
    [{"depth": 21}, {"stage_widths": (16, 32)}, {"inner_widths": [16] * 8}, {"stage_widths": (16, 0, 64)}],
)
def test_impossible_shapes_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CifarResNet(**kwargs)


def test_blocks_per_stage() -> None:
    assert [blocks_per_stage(d) for d in (20, 32, 44, 56, 110)] == [3, 5, 7, 9, 18]
