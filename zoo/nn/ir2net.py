"""IR²Net's two parts (Xue et al., arXiv 2210.02637), as in the authors' code.

Information restriction (training only): an attention map of the last stage's features masks the input
for a second forward pass, so the network learns from the information it finds most salient.
  A = normalize(mean_c F²) with ``F.normalize``'s default dim=1 on a B×h×w tensor — each *column* is
  L2-normalised along the height axis (the reference's choice, kept for faithfulness); A is detached and
  upsampled bilinearly (align_corners=True) to the input size; τ = λ · spatial mean of A per image (λ = 0.15);
  mask M = 1[A > τ]; the restricted input is x ⊙ M on the normalised image.

Information recovery: earlier stages pooled to the last stage's resolution are concatenated with it and
fused by CIRec, a GhostNet-style "cheap" module:
  m = ceil(n / s); Y1 = act(BN(conv1x1(Z; → m))); Y2 = act(BN(groupconv3x3(Y1; m → m(s−1))));
  Y = concat(Y1, Y2)[:, :n]. s = 1 is a plain 1×1 conv + BN + act (IR²Net-A).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

RESTRICTION_LAMBDA = 0.15


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """B×h×w attention of a feature map: channel mean of F², L2-normalised along dim 1 (height), as the reference."""
    return F.normalize(features.pow(2).mean(dim=1))


def restriction_mask(features: torch.Tensor, size: tuple[int, int], lam: float = RESTRICTION_LAMBDA) -> torch.Tensor:
    """B×1×H×W binary mask keeping the input pixels whose upsampled attention exceeds λ · its spatial mean."""
    att = attention_map(features.detach())[:, None]
    att = F.interpolate(att, size=size, mode="bilinear", align_corners=True)
    threshold = lam * att.mean(dim=(2, 3), keepdim=True)
    return (att > threshold).to(features.dtype)


class CIRec(nn.Module):
    """Cheap information-recovery fusion: 1×1 conv to ceil(n/s) channels, then a grouped 3×3 "cheap" conv."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        ratio: int,
        act_layer: Callable[[int], nn.Module],
        cheap_group_size: int = 1,
    ) -> None:
        super().__init__()
        self.out_chs = out_chs
        primary = math.ceil(out_chs / ratio)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, primary, 1, bias=False), nn.BatchNorm2d(primary), act_layer(primary)
        )
        self.cheap_operation = None
        if ratio > 1:
            cheap = primary * (ratio - 1)
            groups = primary // cheap_group_size
            self.cheap_operation = nn.Sequential(
                nn.Conv2d(primary, cheap, 3, padding=1, groups=groups, bias=False),
                nn.BatchNorm2d(cheap),
                act_layer(cheap),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.primary_conv(x)
        if self.cheap_operation is None:
            return y1
        return torch.cat([y1, self.cheap_operation(y1)], dim=1)[:, : self.out_chs]


def hardtanh_act(_: int) -> nn.Module:
    return nn.Hardtanh(inplace=True)


def prelu_act(channels: int) -> nn.Module:
    return nn.PReLU(channels)


def pool_and_concat(taps: list[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
    """Average-pool every tap to the final stage's resolution and concatenate them before it."""
    size = final.shape[-2:]
    return torch.cat([F.adaptive_avg_pool2d(t, size) for t in taps] + [final], dim=1)
