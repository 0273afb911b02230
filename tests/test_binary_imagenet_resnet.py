"""The binary ImageNet ResNet-18 family against methods.md §1 (IR²Net) and §2 (SD-BNN), at small CPU-light inputs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from zoo.measure import count_macs
from zoo.models.binary_imagenet_resnet import BinaryImageNetResNet
from zoo.nn import BinaryConv2d, SelfDistributionBinaryConv2d, restriction_mask

ARCHS = [
    "resnet18_bireal",
    "resnet18_sdbnn",
    "resnet18_ir2net",
    "resnet18_ir2net_b",
    "resnet18_ir2net_c",
    "resnet18_ir2net_d",
]
IR2NET = [a for a in ARCHS if "ir2net" in a]

#: methods.md §1, fusion-variant table: FP params (conv weights only) and MACs at 7×7, in millions to 0.1.
FUSION_TABLE = {
    "resnet18_ir2net": (524_288, 25.7),
    "resnet18_ir2net_b": (264_448, 13.0),
    "resnet18_ir2net_c": (186_368, 9.1),
    "resnet18_ir2net_d": (31_070, 1.5),
}

#: Binary MACs of Bi-Real-18 at 224×224 (Liu et al. 2018: 1.676e9 BOPs).
BIREAL18_BOPS = 1.676e9
BIREAL18_HAND_BOPS = 1_676_279_808
BIREAL18_FLOPS = 137_793_536  # stem, shortcut 1×1 convs and FC at 224×224


def _x(batch: int = 2, size: int = 64, chans: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, chans, size, size)


def _conv_macs(module: nn.Module, hw: int) -> int:
    """MACs of every conv in ``module`` at stride 1, 'same' padding and an hw×hw map (the fusion's convs)."""
    return sum(m.weight.numel() * hw * hw for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch", IR2NET)
def test_fusion_params_and_macs_equal_the_table(arch: str) -> None:
    model = timm.create_model(arch)
    params, macs_m = FUSION_TABLE[arch]
    conv_params = sum(m.weight.numel() for m in model.recovery.modules() if isinstance(m, nn.Conv2d))
    assert conv_params == params
    assert round(_conv_macs(model.recovery, 7) / 1e6, 1) == macs_m
    # the same count measured by torch's flop counter, through the whole module at 1024 ch @ 7×7
    counted = count_macs(model.recovery, (1024, 7, 7))
    assert counted["flops"] == _conv_macs(model.recovery, 7) and counted["bops"] == 0
    # in the whole network at 224×224 the fusion is the only full-precision addition to the Bi-Real baseline
    whole = count_macs(model, (3, 224, 224))
    assert whole["flops"] - BIREAL18_FLOPS == counted["flops"] and whole["bops"] == BIREAL18_HAND_BOPS


def test_fusion_module_shapes() -> None:
    shapes = {}
    for arch in IR2NET:
        rec = timm.create_model(arch).recovery
        cheap = rec.cheap_operation[0] if rec.cheap_operation is not None else None
        shapes[arch] = (
            rec.primary_conv[0].in_channels,
            rec.primary_conv[0].out_channels,
            None if cheap is None else (cheap.out_channels, cheap.groups),
        )
        assert isinstance(rec.primary_conv[2], nn.PReLU)  # ImageNet CIRec activation
    assert shapes == {
        "resnet18_ir2net": (1024, 512, None),
        "resnet18_ir2net_b": (1024, 256, (256, 256)),
        "resnet18_ir2net_c": (1024, 128, (384, 8)),
        "resnet18_ir2net_d": (1024, 26, (494, 26)),
    }


def test_bireal_bops_and_flops_at_224() -> None:
    counts = count_macs(timm.create_model("resnet18_bireal"), (3, 224, 224))
    assert counts["bops"] == pytest.approx(BIREAL18_BOPS, rel=5e-3)
    # hand count: 4 × 64→64 at 56², then per later stage one C→2C/2 and three 2C→2C at its resolution
    hand = 4 * 64 * 64 * 9 * 56**2 + sum(
        (c * 2 * c + 3 * 4 * c * c) * 9 * r * r for c, r in ((64, 28), (128, 14), (256, 7))
    )
    assert counts["bops"] == hand == BIREAL18_HAND_BOPS
    # FP: 7×7 stem, three 1×1 shortcut convs, FC 512→1000 (≈ 138M MACs)
    fp = 3 * 64 * 49 * 112**2 + (64 * 128 * 28**2 + 128 * 256 * 14**2 + 256 * 512 * 7**2) + 512 * 1000
    assert counts["flops"] == fp == BIREAL18_FLOPS


def test_every_variant_has_the_same_binary_backbone() -> None:
    x_size = (3, 64, 64)
    bops = {a: count_macs(timm.create_model(a), x_size)["bops"] for a in ARCHS}
    assert len(set(bops.values())) == 1
    for arch in ARCHS:
        model = timm.create_model(arch)
        convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
        assert len(convs) == 16
        assert all(isinstance(c, SelfDistributionBinaryConv2d) == (arch == "resnet18_sdbnn") for c in convs)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_small_input(arch: str) -> None:
    model = timm.create_model(arch, num_classes=10)
    out = model(_x())
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_estimators_and_sdbnn_parts() -> None:
    sd = timm.create_model("resnet18_sdbnn")
    convs = [m for m in sd.modules() if isinstance(m, SelfDistributionBinaryConv2d)]
    assert all(c.weight_quantizer.estimator == "ste" and c.input_quantizer.estimator == "approx" for c in convs)
    assert [c.asd.fc1.out_features for c in convs[:5]] == [8] * 5  # 64 // 8 (reduction 8 on ImageNet)
    assert isinstance(sd.act1, nn.Identity) and isinstance(sd.head_norm, nn.Identity)
    bireal = timm.create_model("resnet18_bireal")
    assert isinstance(bireal.act1, nn.PReLU) and isinstance(bireal.head_norm, nn.Identity)
    assert isinstance(timm.create_model("resnet18_ir2net").head_norm, nn.BatchNorm1d)


def test_backbone_layout() -> None:
    model = timm.create_model("resnet18_bireal")
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [4, 4, 4, 4]
    assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
    first = model.layer2[0]
    assert isinstance(first.shortcut[0], nn.AvgPool2d) and first.shortcut[1].kernel_size == (1, 1)
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    # reference init of the binary weights: uniform in [0, 0.001)
    w = model.layer1[0].conv.weight
    assert w.min().item() >= 0.0 and w.max().item() < 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_features_only_channels_and_reductions(arch: str) -> None:
    model = timm.create_model(arch, features_only=True)
    outs = model(_x(1))
    assert [o.shape[1] for o in outs] == model.feature_info.channels() == [64, 64, 128, 256, 512]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [64 // o.shape[-1] for o in outs] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("arch", ARCHS)
def test_num_classes_in_chans_and_head_api(arch: str) -> None:
    model = timm.create_model(arch, num_classes=7, in_chans=1, drop_rate=0.1)
    x = _x(chans=1)
    assert model(x).shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.shape == (2, 512, 2, 2) and model.num_features == 512
    assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)
    model.reset_classifier(4)
    assert model.get_classifier().out_features == 4 and model(x).shape == (2, 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_recovery_taps(arch: str) -> None:
    model = timm.create_model(arch)
    x = _x(size=224, batch=1)
    with torch.no_grad():
        stages = model.eval().forward_stages(x)
        assert [tuple(s.shape[1:]) for s in stages] == [
            (64, 112, 112),  # stem, before the max-pool
            (64, 56, 56),
            (128, 28, 28),
            (256, 14, 14),
            (512, 7, 7),
        ]
        fused = model.forward_features(x)
    assert fused.shape == (1, 512, 7, 7)
    if model.recovery is None:
        torch.testing.assert_close(fused, stages[-1], rtol=0, atol=0)


@pytest.mark.parametrize("arch", IR2NET)
def test_restricted_pair_only_in_training(arch: str) -> None:
    model = timm.create_model(arch, num_classes=10)
    x = _x(size=96)  # a 3×3 last stage: at 2×2 the mask keeps every pixel
    logits, restricted = model.train()(x, restricted_pair=True)
    assert logits.shape == restricted.shape == (2, 10) and not torch.equal(logits, restricted)
    with torch.no_grad():
        mask = restriction_mask(model.forward_stages(x)[-1], (96, 96))
        assert 0 < mask.mean().item() < 1
        torch.testing.assert_close(model(x * mask), restricted.detach())  # train-mode BN: batch statistics
    (logits.sum() + restricted.sum()).backward()
    with pytest.raises(RuntimeError, match="train mode only"):
        model.eval()(x, restricted_pair=True)


@pytest.mark.parametrize("arch", ["resnet18_bireal", "resnet18_sdbnn"])
def test_restricted_pair_refused_without_ir2net(arch: str) -> None:
    with pytest.raises(RuntimeError):
        timm.create_model(arch).train()(_x(), restricted_pair=True)


@pytest.mark.parametrize("arch", ["resnet18_bireal", "resnet18_sdbnn", "resnet18_ir2net_c"])
def test_strict_state_dict_round_trip(arch: str) -> None:
    a, b = timm.create_model(arch), timm.create_model(arch)
    b.load_state_dict(a.state_dict(), strict=True)
    a.eval(), b.eval()
    x = _x()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["resnet18_bireal", "resnet18_sdbnn"])
def test_binarize_weights_switch(arch: str) -> None:
    torch.manual_seed(0)
    real = timm.create_model(arch, binarize_weights=False)
    binary = timm.create_model(arch)
    real_convs = [m for m in real.modules() if isinstance(m, BinaryConv2d)]
    for conv in real_convs:
        assert conv.weight_quantizer.estimator == "identity" and conv.input_quantizer.estimator == "approx"
        nn.init.normal_(conv.weight)
        w = conv.binary_weight()
        assert not torch.all(w.abs() == 1)
    for conv in (m for m in binary.modules() if isinstance(m, BinaryConv2d)):
        nn.init.normal_(conv.weight)
        assert set(conv.binary_weight().unique().tolist()) == {-1.0, 1.0}
    # the two steps share one state dict: step 2 loads step 1 strictly
    binary.load_state_dict(real.state_dict(), strict=True)
    assert real(_x()).shape == (2, 1000)


def test_constructor_arguments_are_json_values_and_validated() -> None:
    model = BinaryImageNetResNet(method="ir2net", fusion="d", layers=[1, 1, 1, 1], stage_widths=[8, 16, 32, 64])
    assert model(_x(size=32)).shape == (2, 1000)
    args = {"method": "ir2net", "fusion": "d", "layers": [4, 4, 4, 4], "binarize_weights": False}
    assert BinaryImageNetResNet(**json.loads(json.dumps(args))).fusion == "d"
    for bad in ({"method": "xnor"}, {"fusion": "e"}, {"layers": [4, 4, 4]}):
        with pytest.raises(ValueError):
            BinaryImageNetResNet(**bad)
