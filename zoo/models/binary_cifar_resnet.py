"""Binary CIFAR ResNets (IR-Net / Bi-Real style): ``resnet20_bnn``, ``resnet20_sdbnn``, ``resnet20_ir2net``.

Backbone shared by the three (the IR-Net CIFAR ResNet-20 used by both papers): full-precision 3×3 stem
conv → BN → Hardtanh; basic blocks with a shortcut around *each* binary conv,
  out1 = Hardtanh(BN(bconv1(x)) + shortcut(x)),  out = Hardtanh(BN(bconv2(out1)) + out1),
option-A shortcuts; global average pool → BN1d → full-precision FC. Binary convs have no scaling factors.

- ``bnn``: plain binary convs (clipped-STE weights, ApproxSign activations) — the baseline with no method parts.
- ``sdbnn``: SD-BNN's self-distribution convs (WSD + ASD, reduction 16) with IR-Net's EDE on weights and
  activations (t from 1e-3 to 10 over training).
- ``ir2net``: the plain binary convs plus information recovery (stem, stage-1 and stage-2 outputs pooled to the
  last stage's resolution, concatenated with it: 128 channels → CIRec(→64, s=4)) and, in training, information
  restriction through :meth:`forward_restricted_pair` (the two-pass loss of the ``ir2net`` objective).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from timm.layers import create_classifier
from timm.models import register_model
from torch import nn

from zoo.models._binary_base import BinaryClassifier
from zoo.models._builder import build_zoo_model, cifar_cfg, default_cfgs_with_releases
from zoo.models._pooled_head import init_conv_bn_
from zoo.models.cifar_resnet import OptionAShortcut, blocks_per_stage
from zoo.nn import BinaryConv2d, CIRec, SelfDistributionBinaryConv2d
from zoo.nn.ir2net import hardtanh_act
from zoo.nn.residual_unit import conv_bn_add_act

METHODS = ("bnn", "sdbnn", "ir2net")


def binary_conv_layer(method: str) -> Callable[..., nn.Module]:
    """The binary conv of a method, as a constructor ``(in_chs, out_chs, kernel_size, stride, padding)``."""
    if method == "sdbnn":
        return functools.partial(
            SelfDistributionBinaryConv2d,
            weight_estimator="ede",
            input_estimator="ede",
            asd_reduction=16,
            t_min=1e-3,
            t_max=10.0,
        )
    return functools.partial(BinaryConv2d, weight_estimator="ste", input_estimator="approx")


class BinaryBasicBlock(nn.Module):
    """Two binary 3×3 convs, each followed by BN, its own shortcut and Hardtanh."""

    #: (conv, BN) children whose BN reads exactly the conv's output, and nothing else does: ``zoo.to_inference``
    #: folds these BNs into the packed convs' epilogue.
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv1 = conv_layer(in_chs, out_chs, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = conv_layer(out_chs, out_chs, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(out_chs)
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = OptionAShortcut(in_chs, out_chs, stride) if needs_projection else nn.Identity()
        self.act = nn.Hardtanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_add_act(self.conv1, self.bn1, x, self.shortcut(x), self.act)
        return conv_bn_add_act(self.conv2, self.bn2, out, out, self.act)


class BinaryCifarStyleResNet(BinaryClassifier):
    """The body of the CIFAR-style BNNs: full-precision 3×3 stem conv → BN → Hardtanh, stages of binary blocks
    (the first block of every stage after the first at stride 2), IR²Net's recovery of the stem and every stage
    into the last one, and the BN1d + FC head. The families choose the block, the stage depths and the init."""

    def __init__(
        self,
        block: Callable[[int, int, int, Callable[..., nn.Module]], nn.Module],
        layers: Sequence[int],
        stage_widths: Sequence[int],
        recovery_ratio: int,
        num_classes: int,
        in_chans: int,
        method: str,
        global_pool: str,
        drop_rate: float,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}', use one of {METHODS}")
        widths = [int(w) for w in stage_widths]
        self.method, self.num_classes, self.drop_rate = method, num_classes, drop_rate
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.Hardtanh(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act1")]
        conv_layer = binary_conv_layer(method)
        in_chs = widths[0]
        for stage, (out_chs, n) in enumerate(zip(widths, layers, strict=True)):
            blocks = []
            for i in range(n):
                blocks.append(block(in_chs, out_chs, 2 if stage and not i else 1, conv_layer))
                in_chs = out_chs
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**stage, module=f"layer{stage + 1}"))
        self.recovery = None
        if method == "ir2net":
            tapped = widths[0] + sum(widths)  # the stem and every stage
            self.recovery = CIRec(tapped, widths[-1], ratio=recovery_ratio, act_layer=hardtanh_act)
        self.num_features = self.head_hidden_size = widths[-1]
        self.head_norm = nn.BatchNorm1d(self.num_features)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem output and the output of each stage."""
        outs = [self.act1(self.bn1(self.conv1(x)))]
        for stage in range(1, len(self.feature_info)):
            outs.append(getattr(self, f"layer{stage}")(outs[-1]))
        return outs


class BinaryCifarResNet(BinaryCifarStyleResNet):
    """1-bit CIFAR ResNet (6n+2 layers) with the parts of one method (``bnn``, ``sdbnn`` or ``ir2net``)."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        method: str = "bnn",
        stage_widths: Sequence[int] = (16, 32, 64),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        n = blocks_per_stage(depth)
        layers = [n] * len(stage_widths)
        args = (layers, stage_widths, 4, num_classes, in_chans, method, global_pool, drop_rate)
        super().__init__(BinaryBasicBlock, *args)
        init_conv_bn_(self)


default_cfgs = default_cfgs_with_releases({f"resnet20_{m}": cifar_cfg((8, 8), imagenet_stats=True) for m in METHODS})


def _create(variant: str, method: str, pretrained: bool, **kwargs) -> BinaryCifarResNet:
    feature_cfg = {"out_indices": (0, 1, 2, 3)}
    return build_zoo_model(
        BinaryCifarResNet, variant, pretrained, feature_cfg=feature_cfg, depth=20, method=method, **kwargs
    )


@register_model
def resnet20_bnn(pretrained: bool = False, **kwargs) -> BinaryCifarResNet:
    """Plain 1-bit ResNet-20 (W/A = 1/1): the Bi-Real-style backbone with no method parts, the BNN baseline."""
    return _create("resnet20_bnn", "bnn", pretrained, **kwargs)


@register_model
def resnet20_sdbnn(pretrained: bool = False, **kwargs) -> BinaryCifarResNet:
    """SD-BNN ResNet-20 (W/A = 1/1): self-distribution of weights (WSD) and activations (ASD)."""
    return _create("resnet20_sdbnn", "sdbnn", pretrained, **kwargs)


@register_model
def resnet20_ir2net(pretrained: bool = False, **kwargs) -> BinaryCifarResNet:
    """IR²Net ResNet-20 (W/A = 1/1): information restriction (training) and recovery (CIRec s=4)."""
    return _create("resnet20_ir2net", "ir2net", pretrained, **kwargs)
