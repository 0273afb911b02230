"""Argument checks shared by the CPU and CUDA binary kernels: conv geometry, activations, thresholds."""

from __future__ import annotations

import numbers

import torch


def _pair(v, name: str) -> tuple[int, int]:
    if type(v) is int:
        return v, v
    if isinstance(v, str):
        raise NotImplementedError(f"{name}='{v}' is not supported by the binary kernel; pass integers")
    if isinstance(v, numbers.Integral):
        return int(v), int(v)
    t = tuple(v)
    if len(t) != 2 or not all(isinstance(i, numbers.Integral) for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(t[0]), int(t[1])


def conv_geometry(
    packed_weight: torch.Tensor,
    out_channels: int,
    in_channels: int,
    kernel_size,
    stride,
    padding,
    dilation,
    groups: int,
) -> tuple[int, int, int, int, int, int]:
    """(kh, kw, sh, sw, ph, pw) of a binary conv call, after checking what every kernel backend supports."""
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if _pair(dilation, "dilation") != (1, 1):
        raise NotImplementedError(f"the binary kernels support dilation=1 only, got {dilation}")
    if groups != 1:
        raise NotImplementedError(f"the binary kernels support groups=1 only, got {groups}")
    if min(kh, kw, sh, sw, out_channels, in_channels) < 1 or min(ph, pw) < 0:
        raise ValueError(
            f"need kernel_size, stride, channels >= 1 and padding >= 0, got kernel_size={kernel_size}, "
            f"stride={stride}, padding={padding}, out_channels={out_channels}, in_channels={in_channels}"
        )
    cw = (in_channels + 63) // 64
    if packed_weight.dtype is not torch.int64 or packed_weight.shape != (out_channels, kh, kw, cw):
        raise ValueError(
            f"packed_weight must be int64 [{out_channels}, {kh}, {kw}, {cw}] from pack_weights, "
            f"got {tuple(packed_weight.shape)} {packed_weight.dtype}"
        )
    return kh, kw, sh, sw, ph, pw


def threshold_tensor(x: torch.Tensor, threshold) -> torch.Tensor | None:
    """``threshold`` (None, a number, a ``[C]`` or ``[N, C]`` tensor) as a detached tensor for ``x``, or None."""
    if threshold is None:
        return None
    n, c = x.shape[0], x.shape[1]
    if not isinstance(threshold, torch.Tensor):
        return torch.full((c,), float(threshold), dtype=x.dtype, device=x.device)
    t = threshold.detach()
    if not ((t.dim() == 1 and t.shape[0] == c) or (t.dim() == 2 and tuple(t.shape) == (n, c))):
        raise ValueError(f"threshold must have shape [C] = [{c}] or [N, C] = [{n}, {c}], got {tuple(t.shape)}")
    return t


def check_activation(x: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is a real (N, C, H, W) tensor with at least one channel."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a real 4-D (N, C, H, W) input, got {tuple(x.shape)} {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError("the input needs at least one channel")
