"""CIFAR VGG-16/19 with one width per conv: ``vgg16_cifar``, ``vgg19_cifar``.

The names carry ``_cifar`` because timm's own ``vgg16``/``vgg19`` are the ImageNet networks (224×224 inputs,
4096-wide classifier). Every conv's output width is a constructor argument, so a channel-pruned shape rebuilds
from ``config.json`` -> ``model_args`` alone:

- ``widths``: the output width of every 3×3 conv in network order (13 for VGG-16, 16 for VGG-19); the classifier
  takes the last one. Default: 64, 64 | 128, 128 | 256 ×3 (×4) | 512 ×3 (×4) | 512 ×3 (×4).

``layout`` picks one of the two CIFAR VGGs of the pruning papers:

- ``"acp"`` (default): ABCPruner's VGG, which ACP prunes (methods.md §4): 3×3 conv (with bias) → BN → ReLU blocks,
  a 2×2 max-pool closing each of the five stages, then one ``Linear(widths[-1] → classes)``. At 32×32 the last
  map is 1×1; the head's global average pool is then the identity, so the network is exactly the reference's
  (whose flatten needs 32×32) while taking any input of at least 32×32. PyTorch's default initialisation, as the
  reference (which sets none).
- ``"ucp"``: the network-slimming VGG that UCP prunes (methods.md §5): bias-free convs, max-pools after stages 1–4
  only, global average pooling (the reference's ``AvgPool2d(2)`` at 32×32) and a hidden layer,
  ``Linear(widths[-1] → 512) → BN1d → ReLU → Linear(512 → classes)``; initialised as the reference: conv
  N(0, √(2/(9·C_out))), BN γ = 0.5, β = 0, linear N(0, 0.01) with zero bias. Its taps end at stride 16.

Sizes (``layout="acp"``, 32×32, ``zoo.measure``): VGG-16 with 10 classes 14,728,266 parameters (ACP's table:
14.73M) and 313,201,664 FLOPs; VGG-19 with 100 classes 20,086,692 parameters (20.09M) and 398,182,400 FLOPs.
FLOPs here follow the zoo's convention: multiply-accumulates of the convolutions and linear layers only. ACP's
tables (thop) print 314.59M and 399.52M: thop also counts per-element operations (conv bias, BN, pooling), 0.4 %
and 0.3 % more; the parameter counts agree exactly.

``feature_info``: the output of each stage (after its pool): strides 2, 4, 8, 16, 32 (``"ucp"``: 2, 4, 8, 16, 16),
with the width of the stage's last conv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import register_model
from torch import nn

from zoo.models._builder import build_zoo_model, cifar_cfg, default_cfgs_with_releases
from zoo.models._feature_taps import FeatureTapsMixin
from zoo.models._widths import check_widths
from zoo.nn.mseb import MSEB

__all__ = ["CifarVgg", "VggBlock", "convs_per_stage", "default_widths"]

#: Convs in each of the five stages.
CONVS_PER_STAGE = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
STAGE_WIDTHS = (64, 128, 256, 512, 512)
LAYOUTS = ("acp", "ucp")
UCP_HIDDEN = 512  # the hidden width of UCP's classifier (not pruned)


def convs_per_stage(depth: int) -> tuple[int, ...]:
    if depth not in CONVS_PER_STAGE:
        raise ValueError(f"CIFAR VGG depth must be one of {tuple(CONVS_PER_STAGE)}, got {depth}")
    return CONVS_PER_STAGE[depth]


def default_widths(depth: int) -> list[int]:
    """The unpruned conv widths of VGG-``depth``, in network order."""
    return [w for w, n in zip(STAGE_WIDTHS, convs_per_stage(depth), strict=True) for _ in range(n)]


class VggBlock(nn.Module):
    """3×3 conv [→ MSEB, UCP's VGG placement] → BN → ReLU."""

    def __init__(self, in_chs: int, out_chs: int, bias: bool, mseb: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=bias)
        self.se = MSEB(out_chs) if mseb else nn.Identity()
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.se(self.conv(x))))


def _ucp_hidden(in_features: int) -> nn.Sequential:
    hidden = nn.Sequential()
    hidden.add_module("fc", nn.Linear(in_features, UCP_HIDDEN))
    hidden.add_module("norm", nn.BatchNorm1d(UCP_HIDDEN))
    hidden.add_module("act", nn.ReLU(inplace=True))
    return hidden


class CifarVgg(FeatureTapsMixin, nn.Module):
    """CIFAR VGG-16/19 (BN) with the width of every conv as a constructor argument.

    Children: ``stage1`` … ``stage5`` (each a sequence of :class:`VggBlock` and, closing it, a 2×2 max-pool),
    ``global_pool``, ``pre_logits`` (UCP's hidden layer; identity for ``"acp"``) and ``fc``.
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] | None = None,
        layout: str = "acp",
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        mseb: bool = False,
    ) -> None:
        super().__init__()
        per_stage = convs_per_stage(depth)
        widths = check_widths("widths", widths, default_widths(depth), f"one per conv of VGG-{depth}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.depth, self.widths, self.layout = depth, widths, layout
        self.num_classes, self.drop_rate = num_classes, drop_rate

        self.feature_info = []
        in_chs, reduction, it = in_chans, 1, iter(widths)
        for stage, n in enumerate(per_stage):
            layers: list[nn.Module] = []
            for _ in range(n):
                out_chs = next(it)
                layers.append(VggBlock(in_chs, out_chs, bias=layout == "acp", mseb=mseb))
                in_chs = out_chs
            if layout == "acp" or stage < len(per_stage) - 1:
                layers.append(nn.MaxPool2d(2, 2))
                reduction *= 2
            self.add_module(f"stage{stage + 1}", nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"stage{stage + 1}"))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool: nn.Module = nn.Identity()
        self.pre_logits: nn.Module = nn.Identity()
        self.fc: nn.Module = nn.Identity()
        self.reset_classifier(num_classes, global_pool)  # the head: pool, [UCP's hidden layer], fc
        if layout == "ucp":
            self._init_ucp()

    def _init_ucp(self) -> None:
        """UCP's VGG init for convs, BNs and the head. MSEB gates keep PyTorch's default init: with N(0, 0.01)
        weights both gate layers start near zero, where each one's gradient is scaled by the other's weights, and
        the gates barely move (Fashion-MNIST, VGG-19: per-layer spread <= 0.01 after 100 SGD steps, 0.5 ± 0.003
        after 4 epochs, too flat to rank channels; 0.07-0.84 after 100 steps with the default init). The
        reference's loop, which would reach them, assumes biases its large gates do not have, so it cannot be
        what trained them."""
        gate_layers = {layer for gate in self.modules() if isinstance(gate, MSEB) for layer in gate.modules()}
        for m in self.modules():
            if m in gate_layers:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``fc`` for ``num_classes`` (0: none); ``global_pool`` (None keeps the current one).

        ``global_pool=''`` (no pooling: ``forward_head`` then returns the feature map) also removes UCP's hidden
        layer, which takes a pooled vector; another pool type with a different pooled width gives it a fresh one.
        """
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
            pooled = self.num_features * self.global_pool.feat_mult()
            if not global_pool or self.layout == "acp":
                self.pre_logits = nn.Identity()
                self.head_hidden_size = pooled
            elif not isinstance(self.pre_logits, nn.Sequential) or self.pre_logits.fc.in_features != pooled:
                self.pre_logits = _ucp_hidden(pooled)
                self.head_hidden_size = UCP_HIDDEN
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in range(len(self.feature_info)):
            x = getattr(self, f"stage{stage + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.global_pool(x))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Channel-pruned VGGs (the papers' cases): the same network, its widths from the checkpoint's config.
PRUNED_VGGS = ("vgg16_acp", "vgg19_acp", "vgg19_ucp")

default_cfgs = default_cfgs_with_releases(
    {name: cifar_cfg((1, 1), first_conv="stage1.0.conv") for name in ("vgg16_cifar", "vgg19_cifar", *PRUNED_VGGS)}
)


def _create(variant: str, depth: int, pretrained: bool, **kwargs) -> CifarVgg:
    feature_cfg = {"out_indices": (0, 1, 2, 3, 4)}  # the five stages
    return build_zoo_model(CifarVgg, variant, pretrained, feature_cfg=feature_cfg, depth=depth, **kwargs)


@register_model
def vgg16_cifar(pretrained: bool = False, **kwargs) -> CifarVgg:
    """VGG-16 (BN) for 32×32 CIFAR inputs, full precision: 13 convs, ``widths=`` sets each conv's width.

    ``layout="acp"`` (default) is ABCPruner/ACP's network (Linear(512 → classes) head), ``layout="ucp"`` UCP's.
    """
    return _create("vgg16_cifar", 16, pretrained, **kwargs)


@register_model
def vgg19_cifar(pretrained: bool = False, **kwargs) -> CifarVgg:
    """VGG-19 (BN) for 32×32 CIFAR inputs, full precision: 16 convs, ``widths=`` sets each conv's width.

    ``layout="acp"`` (default) is ABCPruner/ACP's network (Linear(512 → classes) head), ``layout="ucp"`` UCP's.
    """
    return _create("vgg19_cifar", 19, pretrained, **kwargs)


@register_model
def vgg16_acp(pretrained: bool = False, **kwargs) -> CifarVgg:
    """VGG-16 (ACP layout) pruned by ACP (DBSCAN widths refined by a particle-swarm search)."""
    return _create("vgg16_acp", 16, pretrained, **kwargs)


@register_model
def vgg19_acp(pretrained: bool = False, **kwargs) -> CifarVgg:
    """VGG-19 (ACP layout) pruned by ACP (DBSCAN widths refined by a particle-swarm search)."""
    return _create("vgg19_acp", 19, pretrained, **kwargs)


@register_model
def vgg19_ucp(pretrained: bool = False, **kwargs) -> CifarVgg:
    """VGG-19 (UCP layout: hidden head layer) pruned by UCP (channels scored by MSEB gates), the paper's headline."""
    return _create("vgg19_ucp", 19, pretrained, **{"layout": "ucp", **kwargs})
