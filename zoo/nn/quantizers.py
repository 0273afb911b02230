"""Sign quantizers with the gradient estimators the zoo's BNN methods use (larq style: small callables).

Forward, every quantizer maps x to exactly +1 or -1 with one tie rule everywhere, **sign(0) = +1**
(x >= 0 -> +1), which the packed inference kernels match bit for bit. The reference codes use
``torch.sign``, which maps 0 to 0 — a value no 1-bit storage can hold; exact zeros are rare in float
training, and the cards record this choice.

Backward estimators (each one ``torch.autograd.Function``, so the whole quantizer costs one fused op):
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


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, -1 elsewhere (the zoo's tie rule)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignWithSurrogate(torch.autograd.Function):
    """sign forward; backward multiplies by the subclass's ``surrogate_grad(x)`` (the estimator's derivative)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @classmethod
    def backward(cls, ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * cls.surrogate_grad(x).to(grad.dtype)


class _SignSTE(_SignWithSurrogate):
    @staticmethod
    def surrogate_grad(x: torch.Tensor) -> torch.Tensor:
        return x.abs() <= 1


class _SignApprox(_SignWithSurrogate):
    @staticmethod
    def surrogate_grad(x: torch.Tensor) -> torch.Tensor:
        return (2.0 - 2.0 * x.abs()).clamp_(min=0.0)


class _SignEDE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, t: float, k: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t, k
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * (ctx.k * ctx.t) * (1.0 - torch.tanh(ctx.t * x).square()), None, None


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
        if self.estimator == "ste":
            return _SignSTE.apply(x)
        if self.estimator == "approx":
            return _SignApprox.apply(x)
        return _SignEDE.apply(x, self.t, self.k)

    def extra_repr(self) -> str:
        return self.estimator + (f", t_min={self.t_min}, t_max={self.t_max}" if self.estimator == "ede" else "")
