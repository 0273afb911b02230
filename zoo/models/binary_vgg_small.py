"""Binary VGG-Small (the IR-Net/LQ-Net CIFAR VGG): ``vgg_small_bnn``, ``vgg_small_sdbnn``, ``vgg_small_ir2net``.

Backbone shared by the three, as in the CIFAR code of both papers: full-precision conv0 3×3 (→128) → BN →
Hardtanh, then five binary 3×3 convs 128→128, 128→256, 256→256, 256→512, 512→512, each block
conv → [2×2 max-pool after convs 1, 3 and 5] → BN → Hardtanh; the head flattens the final map (512·h·w) into
one full-precision linear layer (no BN1d, no global pooling). Binary convs have no scaling factors.
Init as the reference: every conv N(0, √(2/(k²·C_out))), BN (1, 0), every linear N(0, 0.01) with zero bias.

Input size: the flattening head fixes it. The final map is ⌊H/8⌋×⌊W/8⌋ — 4×4 for 32×32 (CIFAR), 3×3 for 28×28
(Fashion-MNIST: 28→14→7→3) — so the model takes ``img_size`` (int or (H, W), default 32) and its pretrained cfg
sets ``fixed_input_size=True``: timm passes ``img_size`` from the cfg's ``input_size``, as for its ViTs, and
``timm.create_model('vgg_small_bnn', in_chans=1, img_size=28)`` builds the Fashion-MNIST shape.

Head API (there is no global pooling in the reference head):
- ``num_features`` is 512, the channels of the map ``forward_features`` returns (timm's convention);
  ``head_hidden_size`` is the flattened width 512·h·w (8192 at 32×32, 4608 at 28×28), the width of
  ``forward_head(x, pre_logits=True)``.
- ``reset_classifier(num_classes, global_pool=None)`` replaces the linear layer (``num_classes=0``: identity, so
  the model returns the flattened features). ``global_pool`` may only be None / '' / 'flatten' (the reference
  head); a pooling type is refused rather than silently turning this into another architecture.

- ``bnn``: plain binary convs (clipped-STE weights, ApproxSign activations) — the baseline with no method parts.
- ``sdbnn``: SD-BNN's self-distribution convs (WSD + ASD, reduction 16) with IR-Net's EDE on weights and
  activations, t from 0.1 to 10 over training (SD-BNN's VGG-Small range; the ResNets use 1e-3 to 10).
- ``ir2net``: the plain binary convs plus information recovery (the conv0 block output, 128 channels, average-pooled
  to the final resolution and concatenated with the final 512: 640 channels → CIRec(→512, s=32, Hardtanh)) and,
  in training, information restriction from the conv5 block output through
  :meth:`~BinaryVggSmall.forward_restricted_pair`.

At 32×32: 0.604 G binary MACs (BOPs) for all three.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.models import register_model
from torch import nn

from zoo.models._binary_base import BinaryClassifier
from zoo.models._builder import build_zoo_model, cifar_cfg, default_cfgs_with_releases
from zoo.models.binary_cifar_resnet import METHODS, binary_conv_layer
from zoo.nn import CIRec
from zoo.nn.ir2net import hardtanh_act

__all__ = ["BinaryVggSmall", "BinaryVggBlock", "vgg_binary_conv_layer"]

VGG_EDE_RANGE = (0.1, 10.0)  # SD-BNN's (T_min, T_max) for VGG-Small on CIFAR
RECOVERY_RATIO = 32  # CIRec's s in the reference's VGG-Small
POOLED_BLOCKS = (1, 3, 5)  # binary blocks followed by a 2×2 max-pool
FLATTEN_POOLS = (None, "", "flatten")


def vgg_binary_conv_layer(method: str, ede_range: tuple[float, float] = VGG_EDE_RANGE) -> Callable[..., nn.Module]:
    """The binary conv of a method for VGG-Small: the ResNets' one, with SD-BNN's EDE range set to ``ede_range``."""
    conv_layer = binary_conv_layer(method)
    if method != "sdbnn":
        return conv_layer
    t_min, t_max = ede_range
    return functools.partial(conv_layer, t_min=t_min, t_max=t_max)


class BinaryVggBlock(nn.Module):
    """Binary 3×3 conv → [2×2 max-pool] → BN → Hardtanh (the reference pools before its BN)."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool, conv_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, 3, 1, 1)
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.Hardtanh()
        # (conv, BN) whose BN reads exactly the conv's output, for zoo.to_inference's folding: not across a max-pool.
        self.conv_bn_pairs = () if pool else (("conv", "bn"),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pool(self.conv(x))))


def _check_global_pool(global_pool: str | None) -> None:
    if global_pool not in FLATTEN_POOLS:
        raise ValueError(
            f"VGG-Small's head flattens the final map into its linear layer and has no global pooling; "
            f"got global_pool={global_pool!r}, use None, '' or 'flatten'"
        )


class BinaryVggSmall(BinaryClassifier):
    """1-bit VGG-Small with the parts of one method (``bnn``, ``sdbnn`` or ``ir2net``), for a fixed input size."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        method: str = "bnn",
        img_size: int | Sequence[int] = 32,
        widths: Sequence[int] = (128, 128, 256, 256, 512, 512),
        global_pool: str | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}', use one of {METHODS}")
        widths = [int(w) for w in widths]
        if len(widths) != 6 or min(widths) < 1:
            raise ValueError(f"widths must be six positive widths (conv0 and the five binary convs), got {widths}")
        self.img_size = tuple(int(s) for s in to_2tuple(img_size))
        self.feature_size = tuple(s // 2 ** len(POOLED_BLOCKS) for s in self.img_size)
        if min(self.feature_size) < 1:
            raise ValueError(f"img_size must be at least 8 (three 2×2 max-pools), got {self.img_size}")
        _check_global_pool(global_pool)
        self.method, self.num_classes, self.drop_rate = method, num_classes, drop_rate
        self.conv0 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(widths[0])
        self.act0 = nn.Hardtanh()
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act0")]
        conv_layer = vgg_binary_conv_layer(method)
        reduction = 1
        for i in range(1, 6):
            pool = i in POOLED_BLOCKS
            self.add_module(f"block{i}", BinaryVggBlock(widths[i - 1], widths[i], pool, conv_layer))
            reduction *= 2 if pool else 1
            if i in (2, 4, 5):  # the last output at each resolution
                self.feature_info.append(dict(num_chs=widths[i], reduction=reduction, module=f"block{i}"))
        self.recovery = None
        if method == "ir2net":
            self.recovery = CIRec(widths[0] + widths[-1], widths[-1], ratio=RECOVERY_RATIO, act_layer=hardtanh_act)
        self.num_features = widths[-1]
        self.head_hidden_size = widths[-1] * math.prod(self.feature_size)
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):  # the classifier and SD-BNN's ASD branches, as the reference
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new linear layer on the flattened features (``num_classes=0``: none); no global pooling exists."""
        _check_global_pool(global_pool)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The conv0 block output (IR²Net's recovery tap) and the conv5 block output (the map the head flattens)."""
        x = stem = self.act0(self.bn0(self.conv0(x)))
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5):
            x = block(x)
        return [stem, x]

    def recovery_stages(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """``forward_stages`` from the ``feature_info`` taps: the conv0 block output and the last (conv5 block) one."""
        return [taps[0], taps[-1]]

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """timm's pruning (see the base class); the flattened width then follows the last kept tap's map."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        reduction = self.feature_info[max(take_indices)]["reduction"]
        self.head_hidden_size = self.num_features * math.prod(s // reduction for s in self.img_size)
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Flatten the final map into the linear layer; ``pre_logits``: the flattened map (``head_hidden_size``)."""
        x = x.flatten(1)
        if x.shape[1] != self.head_hidden_size:
            raise ValueError(
                f"VGG-Small's head was built for {self.img_size[0]}×{self.img_size[1]} inputs "
                f"({self.head_hidden_size} flattened features) but got {x.shape[1]}: build the model with the "
                "img_size of its inputs (e.g. timm.create_model(..., img_size=28))"
            )
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


default_cfgs = default_cfgs_with_releases(
    {
        f"vgg_small_{m}": cifar_cfg((4, 4), imagenet_stats=True, fixed_input_size=True, first_conv="conv0")
        for m in METHODS
    }
)


def _create(variant: str, method: str, pretrained: bool, **kwargs) -> BinaryVggSmall:
    feature_cfg = {"out_indices": (0, 1, 2, 3)}  # conv0 block + the last block at each of strides 2, 4, 8
    return build_zoo_model(BinaryVggSmall, variant, pretrained, feature_cfg=feature_cfg, method=method, **kwargs)


@register_model
def vgg_small_bnn(pretrained: bool = False, **kwargs) -> BinaryVggSmall:
    """Plain 1-bit VGG-Small (W/A = 1/1): the backbone with no method parts, the BNN baseline."""
    return _create("vgg_small_bnn", "bnn", pretrained, **kwargs)


@register_model
def vgg_small_sdbnn(pretrained: bool = False, **kwargs) -> BinaryVggSmall:
    """SD-BNN VGG-Small (W/A = 1/1): self-distribution of weights (WSD) and activations (ASD), EDE t 0.1 → 10."""
    return _create("vgg_small_sdbnn", "sdbnn", pretrained, **kwargs)


@register_model
def vgg_small_ir2net(pretrained: bool = False, **kwargs) -> BinaryVggSmall:
    """IR²Net VGG-Small (W/A = 1/1): information restriction (training) and recovery (CIRec s=32)."""
    return _create("vgg_small_ir2net", "ir2net", pretrained, **kwargs)
