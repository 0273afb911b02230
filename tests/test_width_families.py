"""The width-parameterised families: CIFAR VGG-16/19 (``vgg16_cifar``, ``vgg19_cifar``) and the ImageNet ResNets
(``resnet18_dense``, ``resnet34_dense``, ``resnet50_dense``): published sizes, exact pruned shapes, rebuilding a
sliced model from its ``model_args`` through timm, width validation and ``features_only``."""

from __future__ import annotations

import itertools
import json

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import zoo  # noqa: F401  (registers the timm architectures)
from zoo.measure import count_macs, count_params
from zoo.models.cifar_vgg import CifarVgg, convs_per_stage, default_widths
from zoo.models.imagenet_resnet import ImageNetResNet
from zoo.prune import PrunePlan, apply_plan, pruned_model_args

VGG16_REDUCED = [32, 61, 100, 111, 247, 207, 254, 496, 459, 512, 274, 467, 280]  # ACP's sample food, 1st = 32
VGG19_REDUCED = [40, 64, 100, 128, 200, 256, 256, 180, 300, 512, 512, 400, 77, 512, 300, 90]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def meta_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """``zoo.measure.count_macs``'s FLOPs (MACs, the halved flop-counter total), on the meta device."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, *input_size, device="meta"))
    return counter.get_total_flops() // 2


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# ------------------------------------------------------------------------------------------------ published sizes


@pytest.mark.parametrize(
    ("arch", "num_classes", "params", "params_m", "flops", "acp_flops_m"),
    [
        ("vgg16_cifar", 10, 14_728_266, 14.73, 313_201_664, 314.59),  # ACP table: CIFAR-10 VGG-16 baseline
        ("vgg19_cifar", 100, 20_086_692, 20.09, 398_182_400, 399.52),  # ACP table: CIFAR-100 VGG-19 baseline
    ],
)
def test_cifar_vgg_sizes_match_acp(arch, num_classes, params, params_m, flops, acp_flops_m) -> None:
    model = timm.create_model(arch, num_classes=num_classes)
    assert count_params(model) == params and round(params / 1e6, 2) == params_m
    measured = count_macs(model, (3, 32, 32))
    assert measured == {"flops": flops, "bops": 0, "ops": flops}
    # ACP's thop also counts per-element ops (conv bias, BN, pooling): its number is a little higher.
    assert 0 < acp_flops_m * 1e6 - flops < 0.005 * flops


@pytest.mark.parametrize(
    ("depth", "params", "params_m", "flops", "acp_flops_m"),
    [
        (18, 11_689_512, 11.69, 1_814_073_344, 1819.87),
        (34, 21_797_672, 21.80, 3_663_761_408, 3672.07),
        (50, 25_557_032, 25.56, 4_089_184_256, 4112.32),
    ],
)
def test_imagenet_resnet_sizes_match_torchvision_and_acp(depth, params, params_m, flops, acp_flops_m) -> None:
    with torch.device("meta"):
        model = timm.create_model(f"resnet{depth}_dense")
        reference = getattr(torchvision.models, f"resnet{depth}")()
    # torchvision's layout and names: its (and timm's resnet*.tv_in1k) weights load as they are
    assert shapes(model.state_dict()) == shapes(reference.state_dict())
    assert count_params(model) == params and round(params / 1e6, 2) == params_m
    assert meta_macs(model, (3, 224, 224)) == flops
    weights = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
    assert weights.meta["num_params"] == params and round(flops / 1e9, 3) == weights.meta["_ops"]
    # ACP's table (thop) adds per-element BN and pooling ops: 0.3-0.6 % above the MACs
    assert 0 < acp_flops_m * 1e6 - flops < 0.01 * flops


def test_meta_count_equals_zoo_measure_on_resnet50() -> None:
    model = timm.create_model("resnet50_dense")
    assert count_macs(model, (3, 224, 224))["flops"] == 4_089_184_256
    with torch.device("meta"):
        assert meta_macs(timm.create_model("resnet50_dense"), (3, 224, 224)) == 4_089_184_256


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_load_and_compute_the_same(depth: int) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    model = timm.create_model(f"resnet{depth}_dense").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ reduced widths


@pytest.mark.parametrize("layout", ["acp", "ucp"])
@pytest.mark.parametrize(("depth", "widths"), [(16, VGG16_REDUCED), (19, VGG19_REDUCED)])
def test_vgg_reduced_widths_are_the_conv_shapes(depth: int, widths: list[int], layout: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(f"vgg{depth}_cifar", widths=widths, layout=layout, num_classes=100)
    layers = convs(model)
    assert [c.out_channels for c in layers] == widths
    assert [c.in_channels for c in layers] == [3, *widths[:-1]]
    assert all(c.kernel_size == (3, 3) and (c.bias is not None) == (layout == "acp") for c in layers)
    first_fc = model.fc if layout == "acp" else model.pre_logits.fc
    assert first_fc.in_features == widths[-1] and model.num_features == widths[-1]
    assert model.fc.out_features == 100
    stage_ends = list(itertools.accumulate(convs_per_stage(depth)))  # the taps: each stage's last conv
    assert [f["num_chs"] for f in model.feature_info] == [widths[i - 1] for i in stage_ends]


def test_default_widths() -> None:
    assert default_widths(16) == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert default_widths(19) == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert CifarVgg(depth=19).widths == default_widths(19)


def test_resnet_reduced_widths_are_the_conv_shapes() -> None:
    inner18 = [5, 64, 17, 128, 33, 256, 1, 512]
    inner50 = [8 * (i + 1) for i in range(16)]
    mid50 = [3 * (i + 1) for i in range(16)]
    with torch.device("meta"):
        r18 = timm.create_model("resnet18_dense", inner_widths=inner18)
        r50 = timm.create_model("resnet50_dense", inner_widths=inner50, mid_widths=mid50)
    blocks18 = [b for stage in (r18.layer1, r18.layer2, r18.layer3, r18.layer4) for b in stage]
    planes18 = [64, 64, 128, 128, 256, 256, 512, 512]
    assert [(b.conv1.out_channels, b.conv2.in_channels, b.conv2.out_channels) for b in blocks18] == list(
        zip(inner18, inner18, planes18, strict=True)
    )
    blocks50 = [b for stage in (r50.layer1, r50.layer2, r50.layer3, r50.layer4) for b in stage]
    planes50 = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert [(b.conv1.out_channels, b.conv2.in_channels) for b in blocks50] == list(zip(inner50, inner50, strict=True))
    assert [(b.conv2.out_channels, b.conv3.in_channels) for b in blocks50] == list(zip(mid50, mid50, strict=True))
    assert [b.conv3.out_channels for b in blocks50] == [4 * p for p in planes50]
    # strides where torchvision v1.5 has them: the 3x3 conv of each stage's first block, and its shortcut
    assert [b.conv2.stride[0] for b in blocks50 if b.downsample is not None] == [1, 2, 2, 2]
    assert [b.downsample[0].stride[0] for b in blocks50 if b.downsample is not None] == [1, 2, 2, 2]
    assert r50.fc.in_features == 2048 and r18.fc.in_features == 512


def _slice(state: dict[str, torch.Tensor], out_keys: list[str], in_keys: list[str], keep: torch.Tensor) -> None:
    """Keep ``keep`` along dim 0 of ``out_keys`` (a conv's filters and BN) and dim 1 of ``in_keys`` (the next layer)."""
    for key in out_keys:
        state[key] = state[key].index_select(0, keep).clone()
    for key in in_keys:
        state[key] = state[key].index_select(1, keep).clone()


def _keep(width: int, dense: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(dense, generator=generator)[:width].sort().values


BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _sliced_vgg(dense: CifarVgg, widths: list[int]) -> dict[str, torch.Tensor]:
    state, g = dict(dense.state_dict()), torch.Generator().manual_seed(0)
    names = [n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    for i, (name, width) in enumerate(zip(names, widths, strict=True)):
        block = name.rsplit(".", 1)[0]
        outs = [k for k in (f"{name}.weight", f"{name}.bias") if k in state] + [f"{block}.bn.{k}" for k in BN_KEYS]
        head = "fc.weight" if dense.layout == "acp" else "pre_logits.fc.weight"
        nxt = [f"{names[i + 1]}.weight"] if i + 1 < len(names) else [head]
        _slice(state, outs, nxt, _keep(width, dense.widths[i], g))
    return state


def _sliced_resnet50(dense: ImageNetResNet, inner: list[int], mid: list[int]) -> dict[str, torch.Tensor]:
    state, g = dict(dense.state_dict()), torch.Generator().manual_seed(0)
    names = [n for n, m in dense.named_modules() if hasattr(m, "conv3")]
    for name, w1, w2, d1, d2 in zip(names, inner, mid, dense.inner_widths, dense.mid_widths, strict=True):
        _slice(state, [f"{name}.conv1.weight"] + [f"{name}.bn1.{k}" for k in BN_KEYS], [f"{name}.conv2.weight"],
               _keep(w1, d1, g))  # fmt: skip
        _slice(state, [f"{name}.conv2.weight"] + [f"{name}.bn2.{k}" for k in BN_KEYS], [f"{name}.conv3.weight"],
               _keep(w2, d2, g))  # fmt: skip
    return state


def _rebuild(arch: str, model_args: dict) -> nn.Module:
    """What loading a checkpoint does with its config: JSON ``model_args`` -> ``timm.create_model``."""
    return timm.create_model(arch, **json.loads(json.dumps({"model_args": model_args}))["model_args"]).eval()


@pytest.mark.parametrize("layout", ["acp", "ucp"])
def test_vgg_model_args_rebuild_a_sliced_model(layout: str) -> None:
    dense = timm.create_model("vgg16_cifar", layout=layout)
    sliced = _sliced_vgg(dense, VGG16_REDUCED)
    rebuilt = _rebuild("vgg16_cifar", {"widths": VGG16_REDUCED, "layout": layout})
    assert shapes(rebuilt.state_dict()) == shapes(sliced)
    rebuilt.load_state_dict(sliced, strict=True)
    assert rebuilt(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet50_model_args_rebuild_a_sliced_model() -> None:
    inner = [64, 20, 33, 128, 1, 77, 100, 256, 200, 150, 99, 3, 256, 512, 400, 300]
    mid = [10, 64, 50, 128, 128, 60, 5, 256, 100, 256, 250, 7, 256, 512, 512, 1]
    dense = timm.create_model("resnet50_dense")
    sliced = _sliced_resnet50(dense, inner, mid)
    rebuilt = _rebuild("resnet50_dense", {"inner_widths": inner, "mid_widths": mid})
    assert shapes(rebuilt.state_dict()) == shapes(sliced)
    rebuilt.load_state_dict(sliced, strict=True)
    assert rebuilt(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_resnet18_pruned_by_zoo_prune_rebuilds_from_its_model_args() -> None:
    torch.manual_seed(0)
    dense = timm.create_model("resnet18_dense", num_classes=10).eval()
    with torch.no_grad():
        for m in dense.modules():  # non-trivial BN statistics, so a wrong channel would show in the output
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    widths = [7, 64, 30, 1, 100, 256, 50, 12]
    plan = PrunePlan([_keep(w, d, g) for w, d in zip(widths, dense.inner_widths, strict=True)])
    pruned = apply_plan(dense, plan).eval()
    model_args = pruned_model_args(pruned)
    assert model_args == {"inner_widths": widths}
    rebuilt = _rebuild("resnet18_dense", {**model_args, "num_classes": 10})
    assert shapes(rebuilt.state_dict()) == shapes(pruned.state_dict())
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ invalid widths


@pytest.mark.parametrize(
    ("arch", "kwargs", "argument"),
    [
        ("vgg16_cifar", {"widths": [64] * 12}, "widths"),  # wrong count
        ("vgg16_cifar", {"widths": [64] * 16}, "widths"),  # VGG-19's count
        ("vgg19_cifar", {"widths": [64] * 15 + [0]}, "widths"),  # zero
        ("vgg16_cifar", {"widths": [-8] + [64] * 12}, "widths"),  # negative
        ("vgg16_cifar", {"widths": [64.5] + [64] * 12}, "widths"),  # not an integer
        ("vgg16_cifar", {"widths": "64"}, "widths"),
        ("vgg16_cifar", {"layout": "slim"}, "layout"),
        ("resnet18_dense", {"inner_widths": [64] * 7}, "inner_widths"),
        ("resnet34_dense", {"inner_widths": [64] * 15 + [0]}, "inner_widths"),
        ("resnet50_dense", {"inner_widths": [64] * 17}, "inner_widths"),
        ("resnet50_dense", {"inner_widths": [True] * 16}, "inner_widths"),
        ("resnet50_dense", {"mid_widths": [64] * 15 + [-3]}, "mid_widths"),
        ("resnet50_dense", {"mid_widths": [64] * 3}, "mid_widths"),
        ("resnet18_dense", {"mid_widths": [64] * 8}, "mid_widths"),  # basic blocks have no mid width
    ],
)
def test_invalid_widths_are_refused_naming_the_argument(arch: str, kwargs: dict, argument: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=rf"\b{argument}\b"):
        timm.create_model(arch, **kwargs)


@pytest.mark.parametrize(("cls", "kwargs"), [(CifarVgg, {"depth": 13}), (ImageNetResNet, {"depth": 20})])
def test_unknown_depths_are_refused(cls: type, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="depth"):
        cls(**kwargs)


# ------------------------------------------------------------------------------------------------ features and head


@pytest.mark.parametrize("layout", ["acp", "ucp"])
def test_vgg_features_only_with_reduced_widths(layout: str) -> None:
    model = timm.create_model("vgg16_cifar", features_only=True, widths=VGG16_REDUCED, layout=layout).eval()
    outs = model(torch.randn(2, 3, 32, 32))
    assert [o.shape[1] for o in outs] == model.feature_info.channels() == [61, 111, 254, 512, 280]
    last = 32 if layout == "acp" else 16
    assert [32 // o.shape[-1] for o in outs] == model.feature_info.reduction() == [2, 4, 8, 16, last]


def test_resnet_features_only_with_reduced_widths() -> None:
    inner = [16] * 16
    model = timm.create_model("resnet50_dense", features_only=True, out_indices=(1, 4), inner_widths=inner).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(256, 16, 16), (2048, 2, 2)]
    assert model.feature_info.reduction() == [4, 32]


def test_ucp_head_hidden_layer_and_classifier_reset() -> None:
    model = timm.create_model("vgg16_cifar", layout="ucp", widths=VGG16_REDUCED, num_classes=100).eval()
    assert isinstance(model.pre_logits.norm, nn.BatchNorm1d) and model.head_hidden_size == 512
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 280, 2, 2)  # no fifth max-pool: global average pooling over the 2x2 map
    assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.pre_logits.fc.in_features == 280  # the hidden layer is kept
    model.reset_classifier(0, "")  # no pooling: the hidden layer (which takes a vector) goes
    assert model(x).shape == (2, 280, 2, 2) and model.head_hidden_size == 280
