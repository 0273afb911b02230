"""Binary convolutions: weights and input activations binarized to exactly ±1, no scaling factors.

The binarized input is zero-padded (``padding_mode='zeros'`` after the sign), exactly what the packed
kernels compute. Layers carry ``binary = True`` so BOPs are counted for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.quantizers import SignQuantizer


class BinaryConv2d(nn.Conv2d):
    """conv2d(sign(a), sign(w)): the plain binary convolution (Bi-Real / IR²Net, no scaling factors)."""

    binary = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        weight_estimator: str = "ste",
        input_estimator: str = "approx",
        **ede_range: float,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.weight_quantizer = SignQuantizer(weight_estimator, **ede_range)
        self.input_quantizer = SignQuantizer(input_estimator, **ede_range)

    def shifted_weight(self) -> torch.Tensor:
        """The real-valued weight that is binarized (methods shift it before the sign)."""
        return self.weight

    def shifted_input(self, x: torch.Tensor) -> torch.Tensor:
        """The real-valued activation that is binarized (methods shift it before the sign)."""
        return x

    def binary_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.shifted_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_b = self.input_quantizer(self.shifted_input(x))
        return F.conv2d(x_b, self.binary_weight(), None, self.stride, self.padding)
