"""Full-precision ImageNet ResNets, per-block inner widths: ``resnet18_dense``, ``resnet34_dense``, ``resnet50_dense``.

The dense (unpruned, full-precision) parents of the ImageNet channel-pruning results (ACP and UCP, methods.md §4–5).
Names: ``resnet18``/``resnet34``/``resnet50`` are timm's own, so the zoo's carry ``_dense`` in the ``<method>`` slot of
``<backbone>_<method>``: the uncompressed parent, beside the 1-bit ``resnet18_bireal``/``_sdbnn``/``_ir2net`` and the
pruned ``<backbone>_<method>`` shapes to come (a pruned checkpoint keeps its widths in ``model_args``).

Layout: torchvision's (ResNet v1.5): 7×7/2 stem conv → BN → ReLU → 3×3/2 max-pool; four stages of 64/128/256/512
``planes`` ([2, 2, 2, 2] basic blocks for ResNet-18, [3, 4, 6, 3] basic blocks for ResNet-34, [3, 4, 6, 3] bottlenecks
for ResNet-50), the first block of stages 2–4 striding (in the bottleneck's 3×3 conv) with a 1×1 conv → BN
projection shortcut (``downsample``); global average pool → FC. Parameter names are torchvision's (``conv1``,
``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc`` …), so at the default widths torchvision's weights (and timm's
``resnet*.tv_in1k``) load strictly. Initialisation as torchvision: convs Kaiming-normal (fan-out), BN (1, 0).

Widths. The residual (stage) widths stay at 64/128/256/512 (×4 after a bottleneck): pruning changes only the widths
inside a block, which no shortcut sees. One entry per block, in network order (8 / 16 / 16 blocks):

- ``inner_widths``: the output width of each block's ``conv1`` (= the input width of its ``conv2``). For a basic
  block this is its one prunable width (ACP's ResNet-18/34 dimension); the same argument and meaning as the CIFAR
  ResNets', so :mod:`zoo.prune` (``apply_plan``, ``pruned_model_args``) handles basic blocks too (their ``se`` is
  an identity slot, where UCP's ImageNet code gates the inner channels). A bottleneck has two prunable layers in
  :mod:`zoo.prune.layers`: conv1 (``inner_widths``), then conv2 (``mid_widths``).
- ``mid_widths`` (bottleneck only): the output width of each bottleneck's middle 3×3 ``conv2`` (= the input width of
  its ``conv3``): UCP's pruned width. ACP prunes conv1 and conv2 of a bottleneck to one shared value: pass the
  same list as both. Default: the dense widths (``planes``), whatever ``inner_widths`` is.

Sizes at 224×224 (``zoo.measure``; ACP's table, measured with thop, in brackets):

- ``resnet18_dense``: 11,689,512 parameters (11.69M), 1,814,073,344 FLOPs (1819.87M);
- ``resnet34_dense``: 21,797,672 parameters (21.80M), 3,663,761,408 FLOPs (3672.07M);
- ``resnet50_dense``: 25,557,032 parameters (25.56M), 4,089,184,256 FLOPs (4112.32M).

FLOPs follow the zoo's convention: multiply-accumulates of the convolutions and the FC layer, as torchvision
reports them (its model cards: 1.81 / 3.66 / 4.09 GFLOPS). ACP's table, measured with thop, also counts
per-element operations (2 per BN element, pooling), which adds 0.3–0.6 %; the parameter counts agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import create_classifier
from timm.models import register_model
from torch import nn

from zoo.models._builder import build_zoo_model, default_cfgs_with_releases, imagenet_cfg
from zoo.models._feature_taps import FeatureTapsMixin
from zoo.models._pooled_head import PooledHeadMixin, init_conv_bn_
from zoo.models._widths import check_widths
from zoo.nn.mseb import MSEB

__all__ = ["BasicBlock", "Bottleneck", "ImageNetResNet", "LAYERS"]

STAGE_PLANES = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """conv3x3 (stride) → BN → ReLU → conv3x3 → BN, plus shortcut, then ReLU; ``inner_chs`` is conv1's output."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int, inner_chs: int, mseb: bool = False) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, inner_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner_chs)
        self.se = MSEB(inner_chs) if mseb else nn.Identity()  # UCP's ImageNet placement: after BN1, before ReLU
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = _projection(in_chs, out_chs, stride)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.se(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """conv1x1 → BN → ReLU → conv3x3 (stride) → BN → ReLU → conv1x1 → BN, plus shortcut, then ReLU.

    ``inner_chs`` is conv1's output, ``mid_chs`` conv2's; conv3 restores ``4 · planes``.
    """

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int, inner_chs: int, mid_chs: int, mseb: bool = False) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, inner_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner_chs, mid_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.se = MSEB(mid_chs) if mseb else nn.Identity()  # UCP: gates the middle 3×3's channels after its BN-ReLU
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.downsample = _projection(in_chs, out_chs, stride)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.se(self.act2(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return self.act3(out + shortcut)


def _projection(in_chs: int, out_chs: int, stride: int) -> nn.Sequential | None:
    """torchvision's projection shortcut (1×1 conv with the block's stride → BN), where the shape changes."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


#: depth -> (block type, blocks per stage).
LAYERS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ImageNetResNet(FeatureTapsMixin, PooledHeadMixin, nn.Module):
    """torchvision's ResNet with each block's inner widths (``inner_widths``, ``mid_widths``) as arguments."""

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 1000,
        in_chans: int = 3,
        inner_widths: Sequence[int] | None = None,
        mid_widths: Sequence[int] | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        mseb: bool = False,
    ) -> None:
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"ImageNet ResNet depth must be one of {tuple(LAYERS)}, got {depth}")
        block, layers = LAYERS[depth]
        planes = [p for p, n in zip(STAGE_PLANES, layers, strict=True) for _ in range(n)]
        bottleneck = block is Bottleneck
        kind = "bottleneck" if bottleneck else "basic block"
        what = f"one per {kind} of ResNet-{depth}: the output width of its conv1"
        inner_widths = check_widths("inner_widths", inner_widths, planes, what)
        if bottleneck:
            what = f"one per bottleneck of ResNet-{depth}: the output width of its 3×3 conv2"
            mid_widths = check_widths("mid_widths", mid_widths, planes, what)
        elif mid_widths is not None:
            raise ValueError(
                f"mid_widths applies to bottleneck ResNets (depth 50 and up) only; ResNet-{depth}'s basic blocks have "
                "one inner width each: pass inner_widths"
            )
        self.depth, self.inner_widths, self.mid_widths = depth, inner_widths, mid_widths
        self.num_classes, self.drop_rate = num_classes, drop_rate

        # Children in execution order up to the last stage: timm's features_only wrapper runs them in sequence.
        self.conv1 = nn.Conv2d(in_chans, STAGE_PLANES[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_PLANES[0])
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=STAGE_PLANES[0], reduction=2, module="act1")]
        in_chs, reduction, index = STAGE_PLANES[0], 4, 0
        for stage, (stage_planes, n) in enumerate(zip(STAGE_PLANES, layers, strict=True)):
            stride = 1 if stage == 0 else 2
            reduction *= stride
            blocks = []
            for i in range(n):
                widths = (inner_widths[index], mid_widths[index]) if bottleneck else (inner_widths[index],)
                blocks.append(block(in_chs, stage_planes, stride if i == 0 else 1, *widths, mseb=mseb))
                in_chs, index = stage_planes * block.expansion, index + 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"layer{stage + 1}"))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        init_conv_bn_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# Channel-pruned ImageNet ResNets (the papers' cases): the same network, its widths from the checkpoint's config.
PRUNED_RESNETS = {"resnet18_acp": 18, "resnet34_acp": 34, "resnet50_acp": 50, "resnet18_aip": 18, "resnet50_ucp": 50}

default_cfgs = default_cfgs_with_releases(
    {name: imagenet_cfg() for name in (*(f"resnet{d}_dense" for d in (18, 34, 50)), *PRUNED_RESNETS)}
)


def _create(variant: str, depth: int, pretrained: bool, **kwargs) -> ImageNetResNet:
    feature_cfg = {"out_indices": (0, 1, 2, 3, 4)}  # stem + four stages
    return build_zoo_model(ImageNetResNet, variant, pretrained, feature_cfg=feature_cfg, depth=depth, **kwargs)


@register_model
def resnet18_dense(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-18 for ImageNet (torchvision layout), full precision; ``inner_widths=`` sets each block's conv1 width."""
    return _create("resnet18_dense", 18, pretrained, **kwargs)


@register_model
def resnet34_dense(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-34 for ImageNet (torchvision layout), full precision; ``inner_widths=`` sets each block's conv1 width."""
    return _create("resnet34_dense", 34, pretrained, **kwargs)


@register_model
def resnet50_dense(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-50 for ImageNet (torchvision v1.5 layout), full precision; per-bottleneck widths of conv1
    (``inner_widths=``) and of the 3×3 conv2 (``mid_widths=``)."""
    return _create("resnet50_dense", 50, pretrained, **kwargs)


@register_model
def resnet18_acp(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-18 (ImageNet) pruned by ACP: each block's conv1 width from DBSCAN + particle-swarm search."""
    return _create("resnet18_acp", 18, pretrained, **kwargs)


@register_model
def resnet34_acp(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-34 (ImageNet) pruned by ACP: each block's conv1 width from DBSCAN + particle-swarm search."""
    return _create("resnet34_acp", 34, pretrained, **kwargs)


@register_model
def resnet50_acp(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-50 (ImageNet) pruned by ACP: one searched width per bottleneck, shared by its conv1 and conv2."""
    return _create("resnet50_acp", 50, pretrained, **kwargs)


@register_model
def resnet18_aip(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-18 (ImageNet) pruned by AIP (adversarial iterative pruning with knowledge transfer)."""
    return _create("resnet18_aip", 18, pretrained, **kwargs)


@register_model
def resnet50_ucp(pretrained: bool = False, **kwargs) -> ImageNetResNet:
    """ResNet-50 (ImageNet) pruned by UCP: each bottleneck's middle 3×3 cut by its MSEB-gate scores."""
    return _create("resnet50_ucp", 50, pretrained, **kwargs)
