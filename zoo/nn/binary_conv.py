"""Binary convolutions: weights and input activations binarized to exactly ±1, no scaling factors.

The binarized input is zero-padded (``padding_mode='zeros'`` after the sign), exactly what the packed
kernels compute. Layers carry ``binary = True`` so BOPs are counted for them.

Training on the CPU runs the forward ``conv2d(sign(x), sign(w))`` on the packed XNOR-popcount kernel (sign, pack and
conv in one call; its integer sums are exact, so the output equals the float conv's bit for bit) and the backward
as the float conv's backward on the recomputed ±1 operands, then the estimators' derivatives: the same numbers as
the sign-then-``F.conv2d`` path, at a fraction of its forward cost and without keeping the ±1 input for backward.
Under ``torch.autocast`` (a recipe's ``train.mixed_precision: bf16``) the forward is still the exact packed one and
the backward's two convs run in the autocast dtype, as autocast's own conv2d would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.kernels.binary import binary_conv2d, kernel_backend, pack_weights
from zoo.kernels.sign import hard_sign
from zoo.nn.quantizers import SignQuantizer


class _PackedTrainingConv(torch.autograd.Function):
    """``conv2d(sign(x), sign(w))`` of a :class:`BinaryConv2d`, with its estimators' backward (see the module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, conv: BinaryConv2d) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        # In bfloat16 the ±1 operands are exact and the convs accumulate in float32: only the incoming gradient rounds.
        ctx.backward_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
        out = binary_conv2d(
            x, pack_weights(weight), conv.out_channels, conv.in_channels, conv.kernel_size, conv.stride, conv.padding
        )
        return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        conv, dtype = ctx.conv, ctx.backward_dtype
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad.to(dtype), hard_sign(x).to(dtype), hard_sign(weight).to(dtype), None, conv.stride, conv.padding,
            conv.dilation, False, [0, 0], 1, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )  # fmt: skip
        if grad_x is not None:
            grad_x = conv.input_quantizer.backward_of(grad_x.to(x.dtype), x)
        if grad_w is not None:
            grad_w = conv.weight_quantizer.backward_of(grad_w.to(weight.dtype), weight)
        return grad_x, grad_w, None


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

    def _runs_packed_in_training(self, x: torch.Tensor) -> bool:
        binary = self.weight_quantizer.estimator != "identity" and self.input_quantizer.estimator != "identity"
        return (
            self.training
            and binary
            and x.device.type == "cpu"
            and (x.dtype is torch.float32 or torch.is_autocast_enabled("cpu"))
            and self.weight.dtype is torch.float32
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and kernel_backend() != "torch-fallback"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._runs_packed_in_training(x):
            return _PackedTrainingConv.apply(self.shifted_input(x), self.shifted_weight(), self)
        x_b = self.input_quantizer(self.shifted_input(x))
        return F.conv2d(x_b, self.binary_weight(), None, self.stride, self.padding)
