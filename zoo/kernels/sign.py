"""Training-time sign kernels: the zoo's hard sign and its estimators' backward, one pass over memory each.

The C++ versions (``sign_estimators.cpp``, in the CPU extension) compute the same float32 operations as the eager
formulas below in the same order, bit for bit; they run for float32 CPU tensors whose strides agree, the eager
formulas everywhere else (CUDA, other dtypes, ``ZOO_DISABLE_KERNELS=1``, ``ZOO_KERNEL_ISA=torch``).
"""

from __future__ import annotations

import torch

from zoo.kernels._build import kernels_disabled, load_extension
from zoo.kernels.binary import _requested_isa  # the one place the ISA switch is read

ESTIMATORS = ("ste", "approx", "tanh")


def _extension_for(*tensors: torch.Tensor):
    if kernels_disabled() or any(t.device.type != "cpu" or t.dtype is not torch.float32 for t in tensors):
        return None
    if _requested_isa() == "torch":
        return None
    first = tensors[0]
    if any(t.shape != first.shape or t.stride() != first.stride() for t in tensors[1:]):
        return None
    if not first.is_contiguous() and not first.is_contiguous(memory_format=torch.channels_last):
        return None
    return load_extension()


def hard_sign_reference(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` (``-0.0`` included), -1 elsewhere (NaN included), in PyTorch ops (traceable, exportable)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """:func:`hard_sign_reference` in one pass where the kernel runs; ``x``'s shape, dtype and strides."""
    ext = _extension_for(x)
    return hard_sign_reference(x) if ext is None else ext.hard_sign(x)


def sign_backward(grad: torch.Tensor, saved: torch.Tensor, estimator: str, kt: float = 1.0) -> torch.Tensor:
    """The gradient of a sign with a surrogate: ``grad`` times the estimator's derivative at ``saved``.

    ``ste``: ``1[|x| <= 1]``; ``approx``: ``max(0, 2 - 2|x|)``; ``tanh``: ``kt * (1 - saved²)`` with
    ``saved = tanh(t x)`` (IR-Net's EDE; ``kt = k * t``).
    """
    ext = _extension_for(grad, saved)
    if ext is not None:
        return ext.sign_backward(grad, saved, estimator, kt)
    if estimator == "ste":
        return grad * (saved.abs() <= 1).to(grad.dtype)
    if estimator == "approx":
        return grad * (2.0 - 2.0 * saved.abs()).clamp_(min=0.0)
    if estimator == "tanh":
        return grad * kt * (1.0 - saved.square())
    raise ValueError(f"unknown estimator '{estimator}', use one of {ESTIMATORS}")
