"""CIFAR-style ResNets of He et al. (2016): resnet20/32/44/56/110.

Basic blocks, three stages of 16/32/64 channels, option-A shortcuts (stride-2 subsampling plus zero
channel padding), global average pooling and one linear classifier. Every width is a constructor argument,
so a channel-pruned checkpoint is rebuilt from ``config.json`` -> ``model_args`` alone:

- ``stage_widths``: the residual (block output) width of each stage;
- ``inner_widths``: the output width of the first conv of every block (the width channel pruning of
  ResNet-56/110 changes), one entry per block in network order;
- ``mseb``: UCP's SE-augmented parent, with an MSEB after the first conv of every block (conv1 -> MSEB ->
  BN -> ReLU), whose gates score the inner channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import register_model
from torch import nn

from zoo.models._builder import build_zoo_model, cifar_cfg, default_cfgs_with_releases
from zoo.models._feature_taps import FeatureTapsMixin
from zoo.models._pooled_head import PooledHeadMixin, init_conv_bn_
from zoo.nn.mseb import MSEB

__all__ = ["CifarResNet", "BasicBlock"]


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by ``stride`` and zero-pad the extra channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_chs} -> {out_chs})")
        self.stride = stride
        self.pad_front = (out_chs - in_chs) // 2
        self.pad_back = out_chs - in_chs - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_front or self.pad_back:
            x = F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))
        return x


class BasicBlock(nn.Module):
    """conv3x3 [-> MSEB] -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU."""

    def __init__(self, in_chs: int, inner_chs: int, out_chs: int, stride: int = 1, mseb: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, inner_chs, 3, stride=stride, padding=1, bias=False)
        self.se = MSEB(inner_chs) if mseb else nn.Identity()
        self.bn1 = nn.BatchNorm2d(inner_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = OptionAShortcut(in_chs, out_chs, stride) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.se(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def blocks_per_stage(depth: int) -> int:
    """Blocks in each of the three stages of a CIFAR ResNet of the given depth (6n+2 layers)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    return (depth - 2) // 6


class CifarResNet(FeatureTapsMixin, PooledHeadMixin, nn.Module):
    """He et al.'s CIFAR ResNet with per-stage and per-block widths as constructor arguments."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        stage_widths: Sequence[int] = (16, 32, 64),
        inner_widths: Sequence[int] | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        mseb: bool = False,
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        stage_widths = [int(w) for w in stage_widths]
        if len(stage_widths) != 3 or min(stage_widths) < 1:
            raise ValueError(f"stage_widths must be three positive widths, got {stage_widths}")
        inner_widths = [int(w) for w in inner_widths] if inner_widths is not None else None
        if inner_widths is None:
            inner_widths = [w for w in stage_widths for _ in range(n)]
        if len(inner_widths) != 3 * n or min(inner_widths) < 1:
            raise ValueError(f"inner_widths must be {3 * n} positive widths (one per block), got {inner_widths}")

        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, stage_widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_widths[0])
        self.act1 = nn.ReLU(inplace=True)

        self.feature_info = [dict(num_chs=stage_widths[0], reduction=1, module="act1")]
        in_chs = stage_widths[0]
        widths = iter(inner_widths)
        for stage, out_chs in enumerate(stage_widths):
            stride = 1 if stage == 0 else 2
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_chs, next(widths), out_chs, stride if i == 0 else 1, mseb))
                in_chs = out_chs
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**stage, module=f"layer{stage + 1}"))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        init_conv_bn_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


# Channel-pruned ResNet-56s: the same network, its widths from the checkpoint's config (``model_args``).
# Without a released tag's model_args (or inner_widths=) they build the dense shape.
PRUNING_METHODS = ("ucp", "acp", "aip", "l1")

default_cfgs = default_cfgs_with_releases(
    {
        **{f"resnet{d}": cifar_cfg((8, 8)) for d in (20, 32, 44, 56, 110)},
        **{f"resnet56_{method}": cifar_cfg((8, 8)) for method in PRUNING_METHODS},
    }
)


def _create(variant: str, depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    feature_cfg = {"out_indices": (0, 1, 2, 3)}  # stem + three stages
    return build_zoo_model(CifarResNet, variant, pretrained, feature_cfg=feature_cfg, depth=depth, **kwargs)


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for 32x32 (CIFAR) or 28x28 (Fashion-MNIST) inputs, full precision."""
    return _create("resnet20", 20, pretrained, **kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for 32x32 (CIFAR) or 28x28 (Fashion-MNIST) inputs, full precision."""
    return _create("resnet32", 32, pretrained, **kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for 32x32 (CIFAR) or 28x28 (Fashion-MNIST) inputs, full precision."""
    return _create("resnet44", 44, pretrained, **kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for 32x32 (CIFAR) or 28x28 (Fashion-MNIST) inputs, full precision."""
    return _create("resnet56", 56, pretrained, **kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for 32x32 (CIFAR) or 28x28 (Fashion-MNIST) inputs, full precision."""
    return _create("resnet110", 110, pretrained, **kwargs)


@register_model
def resnet56_ucp(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 pruned by UCP (uniform channel pruning scored by MSEB gates)."""
    return _create("resnet56_ucp", 56, pretrained, **kwargs)


@register_model
def resnet56_acp(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 pruned by ACP (DBSCAN widths refined by a particle-swarm search)."""
    return _create("resnet56_acp", 56, pretrained, **kwargs)


@register_model
def resnet56_aip(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 pruned by AIP (adversarial iterative pruning with knowledge transfer)."""
    return _create("resnet56_aip", 56, pretrained, **kwargs)


@register_model
def resnet56_l1(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 pruned by L1-norm filter pruning (the magnitude baseline)."""
    return _create("resnet56_l1", 56, pretrained, **kwargs)
