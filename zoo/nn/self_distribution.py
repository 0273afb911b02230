"""SD-BNN's self-distribution binary convolution (Xue et al., arXiv 2103.02394).

- Weight Self Distribution (WSD): one learnable α_c per output channel (init 0);
  ŵ_c = w_c + σ(α_c) · 0.01 · mean(w_c), the mean over the filter's C_in·k·k entries, detached.
- Activation Self Distribution (ASD): an SE branch on the conv input,
  SE(a) = σ(W₂ ReLU(W₁ GAP(a))) ∈ (0,1)^{B×C×1×1} (FCs without bias, hidden width max(1, C // r));
  â = a + SE(a), a per-sample, per-channel positive shift (a dynamic sign threshold at -SE(a)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.binary_conv import BinaryConv2d

WSD_SCALE = 0.01


def activation_shift(x: torch.Tensor, fc1_weight: torch.Tensor, fc2_weight: torch.Tensor) -> torch.Tensor:
    """ASD's shift SE(x) = σ(W₂ ReLU(W₁ GAP(x))) of shape (N, C, 1, 1), from the bias-free FCs' weights."""
    s = torch.sigmoid(F.linear(torch.relu(F.linear(x.mean(dim=(2, 3)), fc1_weight)), fc2_weight))
    return s[:, :, None, None]


class ActivationSelfDistribution(nn.Module):
    """The SE branch whose output shifts the activation before its sign."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation_shift(x, self.fc1.weight, self.fc2.weight)


class SelfDistributionBinaryConv2d(BinaryConv2d):
    """BinaryConv2d with SD-BNN's WSD on the weights and ASD on the input activations."""

    def __init__(self, in_channels: int, out_channels: int, *args, asd_reduction: int = 16, **kwargs) -> None:
        super().__init__(in_channels, out_channels, *args, **kwargs)
        self.alpha = nn.Parameter(torch.zeros(out_channels))
        self.asd = ActivationSelfDistribution(in_channels, asd_reduction)

    def shifted_weight(self) -> torch.Tensor:
        if self.weight_quantizer.estimator == "identity":  # two-step step 1: real weights, WSD comes with step 2
            return self.weight
        filter_mean = self.weight.mean(dim=(1, 2, 3), keepdim=True).detach()
        return self.weight + torch.sigmoid(self.alpha)[:, None, None, None] * WSD_SCALE * filter_mean

    def shifted_input(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.asd(x)
