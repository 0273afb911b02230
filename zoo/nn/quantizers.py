"""Sign quantizers with the gradient estimators the zoo's BNN methods use (larq style: small callables).

Forward, every quantizer maps x to exactly +1 or -1 with one tie rule everywhere, **sign(0) = +1**
(x >= 0 -> +1), which the packed inference kernels match bit for bit. The reference codes use
``torch.sign``, which maps 0 to 0 — a value no 1-bit storage can hold; exact zeros are rare in float
training, and the cards record this choice.

Backward estimators (one ``torch.autograd.Function``; forward and backward are one pass each over memory on the
CPU kernels of :mod:`zoo.kernels.sign`, bit-identical to the eager formulas used elsewhere):
- ``ste``: clipped straight-through, dL/dx = dL/dy * 1[|x| <= 1] (binary weights, Bi-Real/IR²Net);
- ``approx``: Bi-Real's ApproxSign, dL/dx = dL/dy * max(0, 2 - 2|x|) (binary activations);
- ``ede``: IR-Net's error decay estimator, dL/dx = dL/dy * k * t * (1 - tanh²(t x)), with t and k
  following :func:`ede_schedule` over training (SD-BNN on CIFAR, weights and activations).

``identity`` leaves the tensor real-valued: step 1 of the papers' two-step ImageNet training keeps the
weights real while the activations are already binary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.kernels.sign import hard_sign as kernel_hard_sign
from zoo.kernels.sign import hard_sign_reference, sign_backward

hard_sign = hard_sign_reference  # the zoo's tie rule in plain PyTorch ops (what ONNX export and tests use)


def surrogate_backward(grad: torch.Tensor, x: torch.Tensor, estimator: str, t: float, k: float) -> torch.Tensor:
    """dL/dx of ``sign(x)`` under ``estimator`` (``ste``, ``approx`` or ``ede`` with its current ``t``, ``k``)."""
    if estimator == "ede":
        return sign_backward(grad, torch.tanh(t * x), "tanh", k * t)
    return sign_backward(grad, x, estimator)


class _Sign(torch.autograd.Function):
    """sign forward; backward multiplies by the estimator's derivative (one pass each on the CPU kernels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, estimator: str, t: float, k: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.estimator, ctx.t, ctx.k = estimator, t, k
        return kernel_hard_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (x,) = ctx.saved_tensors
        return surrogate_backward(grad, x, ctx.estimator, ctx.t, ctx.k), None, None, None


def ede_schedule(progress: float, t_min: float = 1e-3, t_max: float = 10.0) -> tuple[float, float]:
    """IR-Net's (t, k) at ``progress`` = epoch / epochs: t = 10^(log t_min + (log t_max - log t_min) * progress)."""
    t = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * progress)
    return t, max(1.0 / t, 1.0)


class SignQuantizer(nn.Module):
    """sign with a chosen backward estimator: ``ste``, ``approx`` or ``ede`` (or ``identity``: no sign).

    ``ede`` quantizers follow :func:`ede_schedule`; the trainer calls :meth:`set_training_progress` once per
    epoch (as IR-Net does).
    """

    ESTIMATORS = ("ste", "approx", "ede", "identity")

    def __init__(self, estimator: str = "approx", t_min: float = 1e-3, t_max: float = 10.0) -> None:
        super().__init__()
        if estimator not in self.ESTIMATORS:
            raise ValueError(f"unknown estimator '{estimator}', use one of {self.ESTIMATORS}")
        self.estimator, self.t_min, self.t_max = estimator, t_min, t_max
        self.t, self.k = ede_schedule(0.0, t_min, t_max)

    def set_training_progress(self, progress: float) -> None:
        self.t, self.k = ede_schedule(progress, self.t_min, self.t_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.estimator == "identity":
            return x
        return _Sign.apply(x, self.estimator, self.t, self.k)

    def backward_of(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dL/dx for this quantizer's sign at ``x`` given dL/dsign(x) (for ops that fuse the sign into a conv)."""
        return surrogate_backward(grad, x, self.estimator, self.t, self.k)

    def extra_repr(self) -> str:
        return self.estimator + (f", t_min={self.t_min}, t_max={self.t_max}" if self.estimator == "ede" else "")
