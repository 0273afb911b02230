"""Binary CIFAR-style ResNet-18 (IR-Net's): ``resnet18_cifar_bnn``, ``resnet18_cifar_sdbnn``, ``resnet18_cifar_ir2net``.

The ``_cifar`` marker names the small-input backbone (3×3 stem, no max-pool), as distinct from the ImageNet
``resnet18_*`` (Bi-Real-18). Backbone shared by the three, as in the CIFAR code of both papers:
full-precision 3×3 stem conv(→64) → BN → Hardtanh; four stages of 64/128/256/512 channels with 2 basic blocks each,
  out = Hardtanh(BN(bconv2(Hardtanh(BN(bconv1(x))))) + shortcut(x)),
the downsampling shortcut a full-precision 1×1 conv (stride 2) + BN; global average pool (the reference's
``avg_pool2d(out, 4)`` on 32×32 inputs) → BN1d(512) → full-precision FC. Binary convs have no scaling factors.
Init as the reference: Kaiming normal (PyTorch's default fan_in mode) on every conv and linear layer.

- ``bnn``: plain binary convs (clipped-STE weights, ApproxSign activations) — the baseline with no method parts.
- ``sdbnn``: SD-BNN's self-distribution convs (WSD + ASD, reduction 16) with IR-Net's EDE on weights and
  activations (t from 1e-3 to 10 over training).
- ``ir2net``: the plain binary convs plus information recovery (the stem, stage-1, stage-2 and stage-3 outputs
  average-pooled to the last stage's resolution and concatenated with it: 64+64+128+256+512 = 1024 channels →
  CIRec(→512, s=20, Hardtanh)) and, in training, information restriction from the stage-4 output through
  :meth:`~BinaryResNet18Cifar.forward_restricted_pair`.

At 32×32: 0.547 G binary MACs (BOPs) for all three.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from timm.models import register_model
from torch import nn

from zoo.models._builder import build_zoo_model, cifar_cfg, default_cfgs_with_releases
from zoo.models.binary_cifar_resnet import METHODS, BinaryCifarStyleResNet
from zoo.nn.residual_unit import conv_bn_add_act

__all__ = ["BinaryResNet18Cifar", "BinaryResNet18Block"]

RECOVERY_RATIO = 20  # CIRec's s in the reference's CIFAR ResNet-18


class BinaryResNet18Block(nn.Module):
    """Two binary 3×3 convs with BN; one shortcut around both (FP 1×1 conv + BN where the shape changes)."""

    #: (conv, BN) children whose BN reads exactly the conv's output, and nothing else does: ``zoo.to_inference``
    #: folds these BNs into the packed convs' epilogue.
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv1 = conv_layer(in_chs, out_chs, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = conv_layer(out_chs, out_chs, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )
        self.act = nn.Hardtanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_add_act(self.conv1, self.bn1, x, None, self.act)
        return conv_bn_add_act(self.conv2, self.bn2, out, self.shortcut(x), self.act)


class BinaryResNet18Cifar(BinaryCifarStyleResNet):
    """1-bit CIFAR ResNet-18 (3×3 stem, no max-pool) with the parts of one method (``bnn``, ``sdbnn``, ``ir2net``)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        method: str = "bnn",
        stage_widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (2, 2, 2, 2),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        widths, layers = [int(w) for w in stage_widths], [int(n) for n in layers]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"stage_widths must be four positive widths, got {widths}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {layers}")
        args = (layers, widths, RECOVERY_RATIO, num_classes, in_chans, method, global_pool, drop_rate)
        super().__init__(BinaryResNet18Block, *args)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)


default_cfgs = default_cfgs_with_releases(
    {f"resnet18_cifar_{m}": cifar_cfg((4, 4), imagenet_stats=True) for m in METHODS}
)


def _create(variant: str, method: str, pretrained: bool, **kwargs) -> BinaryResNet18Cifar:
    feature_cfg = {"out_indices": (0, 1, 2, 3, 4)}  # stem + four stages
    return build_zoo_model(BinaryResNet18Cifar, variant, pretrained, feature_cfg=feature_cfg, method=method, **kwargs)


@register_model
def resnet18_cifar_bnn(pretrained: bool = False, **kwargs) -> BinaryResNet18Cifar:
    """Plain 1-bit CIFAR ResNet-18 (W/A = 1/1, 3×3 stem): the backbone with no method parts, the BNN baseline."""
    return _create("resnet18_cifar_bnn", "bnn", pretrained, **kwargs)


@register_model
def resnet18_cifar_sdbnn(pretrained: bool = False, **kwargs) -> BinaryResNet18Cifar:
    """SD-BNN CIFAR ResNet-18 (W/A = 1/1, 3×3 stem): self-distribution of weights (WSD) and activations (ASD)."""
    return _create("resnet18_cifar_sdbnn", "sdbnn", pretrained, **kwargs)


@register_model
def resnet18_cifar_ir2net(pretrained: bool = False, **kwargs) -> BinaryResNet18Cifar:
    """IR²Net CIFAR ResNet-18 (W/A = 1/1, 3×3 stem): information restriction (training) and recovery (CIRec s=20)."""
    return _create("resnet18_cifar_ir2net", "ir2net", pretrained, **kwargs)
