"""The binary CIFAR ResNet-18 and VGG-Small families: shapes, timm API, IR²Net parts and operation counts."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from zoo.measure import count_macs
from zoo.models.binary_resnet18_cifar import BinaryResNet18Cifar
from zoo.models.binary_vgg_small import BinaryVggSmall
from zoo.nn import BinaryConv2d, SelfDistributionBinaryConv2d, pool_and_concat

METHODS = ("bnn", "sdbnn", "ir2net")
RESNET18 = [f"resnet18_cifar_{m}" for m in METHODS]
VGG = [f"vgg_small_{m}" for m in METHODS]
ARCHS = RESNET18 + VGG


def _create(arch: str, size: int = 32, **kwargs) -> torch.nn.Module:
    """The model for size×size inputs (VGG-Small's flattening head needs img_size)."""
    if arch.startswith("vgg") and size != 32:
        kwargs.setdefault("img_size", size)
    return timm.create_model(arch, **kwargs)


def _conv_macs(c_in: int, c_out: int, k: int, h: int, w: int) -> int:
    return c_in * c_out * k * k * h * w


def resnet18_cifar_binary_macs(size: int) -> int:
    """Binary MACs from the layer shapes: 2 blocks × 2 binary 3×3 convs per stage, stages 2-4 start at stride 2."""
    total, c_in, res = 0, 64, size
    for stage, c_out in enumerate((64, 128, 256, 512)):
        for block in range(2):
            if stage and not block:
                res = (res + 1) // 2  # 3×3 conv, stride 2, padding 1
            total += _conv_macs(c_in, c_out, 3, res, res) + _conv_macs(c_out, c_out, 3, res, res)
            c_in = c_out
    return total


def resnet18_cifar_fp_macs(size: int, in_chans: int = 3, num_classes: int = 10) -> int:
    """Full-precision MACs of the plain BNN: 3×3 stem, the three 1×1 downsampling shortcuts and the FC."""
    total = _conv_macs(in_chans, 64, 3, size, size)
    res = size
    for c_in, c_out in ((64, 128), (128, 256), (256, 512)):
        res = (res + 1) // 2
        total += _conv_macs(c_in, c_out, 1, res, res)
    return total + 512 * num_classes


def vgg_small_binary_macs(size: int) -> int:
    """Binary MACs from the layer shapes: each conv at its (pre-pool) output resolution."""
    shapes = [
        (128, 128, size),
        (128, 256, size // 2),
        (256, 256, size // 2),
        (256, 512, size // 4),
        (512, 512, size // 4),
    ]
    return sum(_conv_macs(c_in, c_out, 3, res, res) for c_in, c_out, res in shapes)


def vgg_small_fp_macs(size: int, in_chans: int = 3, num_classes: int = 10) -> int:
    """Full-precision MACs of the plain BNN: conv0 and the linear layer on the flattened 512·(size/8)² map."""
    return _conv_macs(in_chans, 128, 3, size, size) + 512 * (size // 8) ** 2 * num_classes


def test_hand_computed_counts_match_the_references() -> None:
    assert resnet18_cifar_binary_macs(32) == 547_356_672  # kernels-and-speed.md: 0.547 G
    assert resnet18_cifar_fp_macs(32) == 8_066_048  # kernels-and-speed.md: 8.1 M
    assert vgg_small_binary_macs(32) == 603_979_776  # the usual 0.60 G of VGG-Small


@pytest.mark.parametrize("arch", ARCHS)
def test_bops_match_the_hand_computed_binary_macs(arch: str) -> None:
    counts = count_macs(_create(arch), (3, 32, 32))
    expected = resnet18_cifar_binary_macs(32) if arch in RESNET18 else vgg_small_binary_macs(32)
    assert counts["bops"] == expected
    assert counts["ops"] == counts["flops"] + counts["bops"] // 64
    if arch.endswith("_bnn"):  # the method parts (ASD branches, CIRec) only add full-precision MACs
        assert counts["flops"] == (resnet18_cifar_fp_macs(32) if arch in RESNET18 else vgg_small_fp_macs(32))


@pytest.mark.parametrize("arch", ["resnet18_cifar_bnn", "vgg_small_bnn"])
def test_bops_at_28x28(arch: str) -> None:
    counts = count_macs(_create(arch, 28, in_chans=1), (1, 28, 28))
    if arch in RESNET18:
        assert counts["bops"] == resnet18_cifar_binary_macs(28)
        assert counts["flops"] == resnet18_cifar_fp_macs(28, in_chans=1)
    else:
        assert counts["bops"] == vgg_small_binary_macs(28)
        assert counts["flops"] == vgg_small_fp_macs(28, in_chans=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_at_32x32_reaches_every_parameter(arch: str) -> None:
    torch.manual_seed(0)
    model = _create(arch)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_at_28x28_one_channel(arch: str) -> None:
    model = _create(arch, 28, in_chans=1, num_classes=7)
    assert model.conv1.in_channels == 1 if arch in RESNET18 else model.conv0.in_channels == 1
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_vgg_small_img_size_follows_the_input_size() -> None:
    model = timm.create_model("vgg_small_bnn", in_chans=1, img_size=28)
    assert model.feature_size == (3, 3) and model.head_hidden_size == 512 * 9 and model.fc.in_features == 4608
    assert model.pretrained_cfg["fixed_input_size"] is True
    assert timm.create_model("vgg_small_bnn").head_hidden_size == 512 * 16  # img_size from the cfg's input_size
    # a released checkpoint's cfg (input_size from its config.json) rebuilds the right head without img_size
    released = timm.create_model("vgg_small_sdbnn", pretrained_cfg_overlay={"input_size": (1, 28, 28)})
    assert released.conv0.in_channels == 1 and released.head_hidden_size == 4608
    assert BinaryVggSmall(img_size=(32, 24)).feature_size == (4, 3)
    with pytest.raises(ValueError, match="img_size=28"):
        timm.create_model("vgg_small_bnn", in_chans=1)(torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match="at least 8"):
        BinaryVggSmall(img_size=7)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [32, 28])
def test_features_only(arch: str, size: int) -> None:
    model = _create(arch, size, features_only=True, in_chans=1)
    outs = model(torch.randn(1, 1, size, size))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    # the spatial size of each tap is the input's, halved (rounding as the stride-2 conv / max-pool does)
    halve = (lambda s: (s + 1) // 2) if arch in RESNET18 else (lambda s: s // 2)
    expected = []
    for reduction in model.feature_info.reduction():
        s = size
        for _ in range(int(math.log2(reduction))):
            s = halve(s)
        expected.append(s)
    assert [o.shape[-1] for o in outs] == expected
    if arch in RESNET18:
        assert model.feature_info.channels() == [64, 64, 128, 256, 512]
        assert model.feature_info.reduction() == [1, 1, 2, 4, 8]
    else:
        assert model.feature_info.channels() == [128, 256, 512, 512]
        assert model.feature_info.reduction() == [1, 2, 4, 8]


@pytest.mark.parametrize("arch", ARCHS)
def test_reset_classifier_and_head(arch: str) -> None:
    model = _create(arch, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 512, 4, 4)
    width = 512 if arch in RESNET18 else 512 * 4 * 4  # VGG-Small's pre-logits are the flattened map
    assert model.num_features == 512 and model.head_hidden_size == width
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, width)
    torch.testing.assert_close(model.get_classifier()(pre), model(x))
    model.reset_classifier(0)
    assert model(x).shape == (2, width)
    model.reset_classifier(4)
    assert model.get_classifier().out_features == 4 and model(x).shape == (2, 4)
    if arch in VGG:
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.flatten(1))
        model.reset_classifier(5, global_pool="flatten")
        assert model(x).shape == (2, 5)
        with pytest.raises(ValueError, match="no global pooling"):
            model.reset_classifier(5, global_pool="avg")
        with pytest.raises(ValueError, match="no global pooling"):
            timm.create_model(arch, global_pool="avg")
    else:
        model.reset_classifier(3, global_pool="max")
        assert model(x).shape == (2, 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_strict_state_dict_round_trip(arch: str) -> None:
    a, b = _create(arch), _create(arch)
    with torch.no_grad():  # make the BN statistics non-default so that buffers are compared too
        a.train()(torch.randn(4, 3, 32, 32))
    b.load_state_dict(a.state_dict(), strict=True)
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_resnet18_blocks_and_shortcuts() -> None:
    model = _create("resnet18_cifar_bnn")
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert len(blocks) == 8
    assert sum(isinstance(m, BinaryConv2d) for m in model.modules()) == 16
    projections = [i for i, b in enumerate(blocks) if isinstance(b.shortcut, torch.nn.Sequential)]
    assert projections == [2, 4, 6]  # the first block of stages 2-4: FP 1×1 conv (stride 2) + BN
    conv = blocks[2].shortcut[0]
    assert type(conv) is torch.nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert type(model.conv1) is torch.nn.Conv2d and model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1) and not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_vgg_small_blocks() -> None:
    model = _create("vgg_small_bnn")
    blocks = [model.block1, model.block2, model.block3, model.block4, model.block5]
    assert [(b.conv.in_channels, b.conv.out_channels) for b in blocks] == [
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 512),
        (512, 512),
    ]
    assert [isinstance(b.pool, torch.nn.MaxPool2d) for b in blocks] == [True, False, True, False, True]
    assert all(isinstance(b.conv, BinaryConv2d) for b in blocks) and type(model.conv0) is torch.nn.Conv2d
    assert [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm1d)] == []  # no BN1d in the head
    # the reference's init: convs N(0, sqrt(2 / (k² C_out))), linear N(0, 0.01)
    torch.manual_seed(0)
    model = _create("vgg_small_bnn")
    assert model.block5.conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.02)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.02) and not model.fc.bias.any()


@pytest.mark.parametrize(
    "arch, t_min", [("resnet18_cifar_sdbnn", 1e-3), ("vgg_small_sdbnn", 0.1), ("resnet18_cifar_bnn", None)]
)
def test_binary_conv_estimators(arch: str, t_min: float | None) -> None:
    convs = [m for m in _create(arch).modules() if isinstance(m, BinaryConv2d)]
    if t_min is None:  # plain / IR²Net convs: clipped STE on weights, ApproxSign on activations
        assert all(not isinstance(c, SelfDistributionBinaryConv2d) for c in convs)
        assert {(c.weight_quantizer.estimator, c.input_quantizer.estimator) for c in convs} == {("ste", "approx")}
        return
    assert all(isinstance(c, SelfDistributionBinaryConv2d) for c in convs)
    quantizers = [q for c in convs for q in (c.weight_quantizer, c.input_quantizer)]
    assert {(q.estimator, q.t_min, q.t_max) for q in quantizers} == {("ede", t_min, 10.0)}
    assert {c.asd.fc1.out_features * 16 for c in convs} == {c.in_channels for c in convs}  # ASD reduction 16


def test_resnet18_ir2net_recovery_taps() -> None:
    model = _create("resnet18_cifar_ir2net")
    stages = model.forward_stages(torch.randn(2, 3, 32, 32))
    assert [tuple(s.shape[1:]) for s in stages] == [
        (64, 32, 32),
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
    ]
    fused_in = pool_and_concat(stages[:-1], stages[-1])
    assert fused_in.shape == (2, 1024, 4, 4)
    offsets = [0, 64, 128, 256, 512, 1024]
    for tap, lo, hi in zip(stages, offsets[:-1], offsets[1:], strict=True):
        torch.testing.assert_close(fused_in[:, lo:hi], F.adaptive_avg_pool2d(tap, 4))
    # CIRec(1024 -> 512, s=20): 1×1 conv to ceil(512/20) = 26, depthwise-multiplier 3×3 26 -> 494, sliced to 512
    primary, cheap = model.recovery.primary_conv[0], model.recovery.cheap_operation[0]
    assert (primary.in_channels, primary.out_channels) == (1024, 26)
    assert (cheap.in_channels, cheap.out_channels, cheap.groups) == (26, 494, 26)
    assert isinstance(model.recovery.primary_conv[2], torch.nn.Hardtanh)
    assert model.fuse(stages).shape == (2, 512, 4, 4)
    assert _create("resnet18_cifar_bnn").recovery is None and _create("resnet18_cifar_sdbnn").recovery is None


@pytest.mark.parametrize("size, final", [(32, 4), (28, 3)])
def test_vgg_small_ir2net_recovery_taps(size: int, final: int) -> None:
    model = _create("vgg_small_ir2net", size)
    stem, last = model.forward_stages(torch.randn(2, 3, size, size))
    assert stem.shape == (2, 128, size, size) and last.shape == (2, 512, final, final)
    fused_in = pool_and_concat([stem], last)
    assert fused_in.shape == (2, 640, final, final)
    torch.testing.assert_close(fused_in[:, :128], F.adaptive_avg_pool2d(stem, final))
    torch.testing.assert_close(fused_in[:, 128:], last)
    # CIRec(640 -> 512, s=32): 1×1 conv to 16, depthwise-multiplier 3×3 16 -> 496
    primary, cheap = model.recovery.primary_conv[0], model.recovery.cheap_operation[0]
    assert (primary.in_channels, primary.out_channels) == (640, 16)
    assert (cheap.in_channels, cheap.out_channels, cheap.groups) == (16, 496, 16)
    assert model.fuse([stem, last]).shape == (2, 512, final, final)
    assert _create("vgg_small_bnn").recovery is None and _create("vgg_small_sdbnn").recovery is None


@pytest.mark.parametrize("arch", ["resnet18_cifar_ir2net", "vgg_small_ir2net"])
def test_restricted_pair_only_in_ir2net_training(arch: str) -> None:
    torch.manual_seed(0)
    model = _create(arch).train()
    x = torch.randn(2, 3, 32, 32)
    logits, restricted = model(x, restricted_pair=True)
    assert logits.shape == restricted.shape == (2, 10)
    (logits.sum() + restricted.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with pytest.raises(RuntimeError, match="train mode only"):
        model(x, restricted_pair=True)
    with pytest.raises(RuntimeError, match="train mode only"):
        model.forward_restricted_pair(x)
    other = _create(arch.replace("ir2net", "sdbnn")).train()
    with pytest.raises(RuntimeError, match="IR²Net training"):
        other(x, restricted_pair=True)


@pytest.mark.parametrize("arch", ["resnet18_cifar_ir2net", "vgg_small_ir2net"])
def test_restriction_masks_from_the_last_stage(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.models._binary_base as binary_base

    seen = []

    def spy(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        seen.append((tuple(features.shape), tuple(size)))
        mask = torch.ones(features.shape[0], 1, *size)
        mask[..., : size[1] // 2] = 0  # at init the attention is nearly flat and the real mask keeps every pixel
        return mask

    monkeypatch.setattr(binary_base, "restriction_mask", spy)
    torch.manual_seed(0)
    model = _create(arch).train()
    x = torch.randn(2, 3, 32, 32)
    logits, restricted = model(x, restricted_pair=True)
    assert seen == [((2, 512, 4, 4), (32, 32))]  # from the stage-4 output / the conv5 block output
    # the second pass is the same network in train mode on the masked (normalised) image
    x_r = x.clone()
    x_r[..., :16] = 0
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(restricted, model(x_r))
    assert not torch.allclose(logits, restricted)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        BinaryResNet18Cifar(method="xnor")
    with pytest.raises(ValueError, match="four positive widths"):
        BinaryResNet18Cifar(stage_widths=(64, 128, 256))
    with pytest.raises(ValueError, match="unknown method"):
        BinaryVggSmall(method="xnor")
    with pytest.raises(ValueError, match="six positive widths"):
        BinaryVggSmall(widths=(128, 128, 256))
