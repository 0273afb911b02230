"""Binary ImageNet ResNet-18s (Bi-Real / ReActNet style): ``resnet18_{bireal, sdbnn, ir2net, ir2net_b/_c/_d}``.

Backbone shared by all (the Bi-Real-18 of both papers' ImageNet code): full-precision 7×7/2 stem conv(→64) → BN →
stem activation → 3×3/2 max-pool; 16 blocks, each *one* binary 3×3 conv with its own shortcut,
  out = PReLU(BN(bconv(x)) + shortcut(x)),
in layers [4, 4, 4, 4] over widths 64/128/256/512; the first block of layers 2–4 downsamples and its shortcut is
AvgPool2d(2) → full-precision 1×1 conv → BN; global average pool → (BN1d for IR²Net) → full-precision FC.
Binary convs have no scaling factors; their weights are initialised uniform in [0, 0.001) as in the reference
(ReActNet's ``HardBinaryConv``), the full-precision layers keep PyTorch's default initialisation.

- ``bireal``: plain binary convs (clipped-STE weights, ApproxSign activations) — the baseline with no method parts.
- ``sdbnn``: SD-BNN's self-distribution convs (WSD + ASD, reduction 8); on ImageNet the paper's code uses
  ApproxSign for the activations and the clipped STE for the weights, not IR-Net's EDE.
- ``ir2net``: the plain binary convs plus information recovery — the stem output *before* the max-pool (64 ch),
  layer 1 (64), layer 2 (128) and layer 3 (256) average-pooled to the last stage's resolution and concatenated with
  layer 4 (512): 1024 channels fused to 512 by one of the four modules of the paper's variants (PReLU activations),
    A: 1×1 conv 1024→512 + BN + PReLU (``CIRec`` ratio 1),
    B: ``CIRec`` s=2 (1×1 1024→256, depthwise 3×3 256→256),
    C: ``CIRec`` s=4 (1×1 1024→128, grouped 3×3 128→384 with 16 channels per group, i.e. 8 groups),
    D: ``CIRec`` s=20 (1×1 1024→26, depthwise-multiplier 3×3 26→494; 520 channels sliced to 512),
  and, in training, information restriction through :meth:`forward_restricted_pair` (mask from layer 4's output).

Stem activation: PReLU(64) for ``bireal`` and ``ir2net`` (IR²Net's ImageNet code); **none** for ``sdbnn``, whose
released ImageNet model file (the one its trained checkpoint belongs to) goes conv → BN → max-pool, although the
SD-BNN README mentions PReLU. ``feature_info`` still names the stem output ``act1`` (an ``nn.Identity`` there).

``binarize_weights=False`` keeps the weights real-valued (weight estimator ``identity``) while the activations are
binary: step 1 of the papers' two-step ImageNet training; step 2 loads that checkpoint with the default ``True``.

Shortcut pooling uses ``ceil_mode=True``: identical to the reference's AvgPool2d(2) on the even maps of a 224×224
input, and it keeps the shortcut and the strided conv the same size on odd maps (e.g. small test inputs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from timm.layers import create_classifier
from timm.models import register_model
from torch import nn

from zoo.models._binary_base import BinaryClassifier
from zoo.models._builder import build_zoo_model, default_cfgs_with_releases, imagenet_cfg
from zoo.nn import BinaryConv2d, CIRec, SelfDistributionBinaryConv2d
from zoo.nn.ir2net import prelu_act
from zoo.nn.residual_unit import conv_bn_add_act

METHODS = ("bireal", "sdbnn", "ir2net")
SDBNN_ASD_REDUCTION = 8

#: IR²Net's four ImageNet fusion modules: (CIRec ratio s, channels per group of the cheap 3×3 conv).
IR2NET_FUSIONS = {"a": (1, 1), "b": (2, 1), "c": (4, 16), "d": (20, 1)}


def binary_conv_layer(method: str, binarize_weights: bool = True) -> Callable[..., nn.Module]:
    """The binary conv of a method, as a constructor ``(in_chs, out_chs, kernel_size, stride, padding)``."""
    weight_estimator = "ste" if binarize_weights else "identity"
    if method == "sdbnn":
        return functools.partial(
            SelfDistributionBinaryConv2d,
            weight_estimator=weight_estimator,
            input_estimator="approx",
            asd_reduction=SDBNN_ASD_REDUCTION,
        )
    return functools.partial(BinaryConv2d, weight_estimator=weight_estimator, input_estimator="approx")


class DownsampleShortcut(nn.Sequential):
    """Bi-Real's downsampling shortcut: 2×2 average pool → full-precision 1×1 conv → BN."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__(
            nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity(),
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )


class BiRealBlock(nn.Module):
    """One binary 3×3 conv → BN → + shortcut → PReLU."""

    #: (conv, BN) children whose BN reads exactly the conv's output, and nothing else does: ``zoo.to_inference``
    #: folds these BNs into the packed convs' epilogue.
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, 3, stride, 1)
        self.bn = nn.BatchNorm2d(out_chs)
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = DownsampleShortcut(in_chs, out_chs, stride) if needs_projection else nn.Identity()
        self.act = nn.PReLU(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_add_act(self.conv, self.bn, x, self.shortcut(x), self.act)


class BinaryImageNetResNet(BinaryClassifier):
    """1-bit Bi-Real ResNet for ImageNet with the parts of one method (``bireal``, ``sdbnn`` or ``ir2net``)."""

    conv_bn_act_units = (("conv1", "bn1", "act1"),)  # the stem: each output read by the next only (zoo.inference)

    @property
    def pooled_stem_units(self) -> tuple[tuple[str, str, str, str], ...]:
        """The stem and its max-pool when the pool alone reads the stem (IR²Net's recovery reads it too)."""
        return () if self.recovery is not None else (("conv1", "bn1", "act1", "maxpool"),)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        method: str = "bireal",
        fusion: str = "a",
        layers: Sequence[int] = (4, 4, 4, 4),
        stage_widths: Sequence[int] = (64, 128, 256, 512),
        binarize_weights: bool = True,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}', use one of {METHODS}")
        if fusion not in IR2NET_FUSIONS:
            raise ValueError(f"unknown fusion '{fusion}', use one of {tuple(IR2NET_FUSIONS)}")
        layers, widths = [int(n) for n in layers], [int(w) for w in stage_widths]
        if len(layers) != len(widths) or min(layers + widths) < 1:
            raise ValueError(f"layers {layers} and stage_widths {widths} must be positive and of equal length")
        self.method, self.fusion, self.binarize_weights = method, fusion, binarize_weights
        self.num_classes, self.drop_rate = num_classes, drop_rate

        # Children in execution order up to the last stage: timm's features_only wrapper runs them in sequence.
        self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.Identity() if method == "sdbnn" else nn.PReLU(widths[0])
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=widths[0], reduction=2, module="act1")]
        conv_layer = binary_conv_layer(method, binarize_weights)
        in_chs, reduction = widths[0], 4
        for stage, (depth, out_chs) in enumerate(zip(layers, widths, strict=True)):
            stride = 2 if stage else 1
            reduction *= stride
            blocks = []
            for i in range(depth):
                blocks.append(BiRealBlock(in_chs, out_chs, stride if i == 0 else 1, conv_layer))
                in_chs = out_chs
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"layer{stage + 1}"))

        self.num_features = self.head_hidden_size = widths[-1]
        self.recovery = None
        self.head_norm: nn.Module = nn.Identity()
        if method == "ir2net":
            ratio, cheap_group_size = IR2NET_FUSIONS[fusion]
            tapped = widths[0] + sum(widths)  # stem (before the max-pool), layers 1..3 and the last stage
            self.recovery = CIRec(tapped, widths[-1], ratio, prelu_act, cheap_group_size=cheap_group_size)
            self.head_norm = nn.BatchNorm1d(self.num_features)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

        for m in self.modules():
            if isinstance(m, BinaryConv2d):  # the reference's rand * 0.001 (ReActNet's HardBinaryConv)
                nn.init.uniform_(m.weight, 0.0, 1e-3)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem output (before the max-pool) and the output of each stage."""
        outs = [self.act1(self.bn1(self.conv1(x)))]
        x = self.maxpool(outs[0])
        for i in range(len(self.feature_info) - 1):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


_VARIANTS = {
    "resnet18_bireal": {"method": "bireal"},
    "resnet18_sdbnn": {"method": "sdbnn"},
    "resnet18_ir2net": {"method": "ir2net", "fusion": "a"},
    "resnet18_ir2net_b": {"method": "ir2net", "fusion": "b"},
    "resnet18_ir2net_c": {"method": "ir2net", "fusion": "c"},
    "resnet18_ir2net_d": {"method": "ir2net", "fusion": "d"},
}

default_cfgs = default_cfgs_with_releases({name: imagenet_cfg() for name in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs) -> BinaryImageNetResNet:
    feature_cfg = {"out_indices": (0, 1, 2, 3, 4)}
    return build_zoo_model(
        BinaryImageNetResNet, variant, pretrained, feature_cfg=feature_cfg, **{**_VARIANTS[variant], **kwargs}
    )


@register_model
def resnet18_bireal(pretrained: bool = False, **kwargs) -> BinaryImageNetResNet:
    """Plain 1-bit Bi-Real ResNet-18 (W/A = 1/1): the backbone with no method parts, the ImageNet BNN baseline."""
    return _create("resnet18_bireal", pretrained, **kwargs)


@register_model
def resnet18_sdbnn(pretrained: bool = False, **kwargs) -> BinaryImageNetResNet:
    """SD-BNN ResNet-18 (W/A = 1/1): self-distribution of weights (WSD) and activations (ASD, reduction 8)."""
    return _create("resnet18_sdbnn", pretrained, **kwargs)


@register_model
def resnet18_ir2net(pretrained: bool = False, **kwargs) -> BinaryImageNetResNet:
    """IR²Net-A ResNet-18 (W/A = 1/1): restriction (training) and recovery by a 1×1 conv 1024→512 + BN + PReLU."""
    return _create("resnet18_ir2net", pretrained, **kwargs)


@register_model
def resnet18_ir2net_b(pretrained: bool = False, **kwargs) -> BinaryImageNetResNet:
    """IR²Net-B ResNet-18 (W/A = 1/1): recovery by CIRec s=2 (1×1 1024→256, depthwise 3×3 256→256)."""
    return _create("resnet18_ir2net_b", pretrained, **kwargs)


@register_model
def resnet18_ir2net_c(pretrained: bool = False, **kwargs) -> BinaryImageNetResNet:
    """IR²Net-C ResNet-18 (W/A = 1/1): recovery by CIRec s=4 (1×1 1024→128, 8-group 3×3 128→384)."""
    return _create("resnet18_ir2net_c", pretrained, **kwargs)


@register_model
def resnet18_ir2net_d(pretrained: bool = False, **kwargs) -> BinaryImageNetResNet:
    """IR²Net-D ResNet-18 (W/A = 1/1): recovery by CIRec s=20 (1×1 1024→26, depthwise ×19 3×3 26→494)."""
    return _create("resnet18_ir2net_d", pretrained, **kwargs)
