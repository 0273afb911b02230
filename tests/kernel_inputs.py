"""Inputs shared by the CPU and CUDA kernel tests: random values with sign ties, and the same values laid out in
memory in the ways a caller may hand them over."""

from __future__ import annotations

import torch


def with_ties(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Sprinkle exact +0.0 and -0.0 (both binarize to +1) into a random tensor."""
    r = torch.rand(t.shape, generator=gen)
    t = torch.where(r < 0.05, torch.zeros_like(t), t)
    return torch.where(r > 0.95, torch.full_like(t, -0.0), t)


LAYOUTS = ["contiguous", "channels_last", "misaligned", "misaligned_cl", "channel_slice", "width_slice", "transposed"]


def in_layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``x`` (one of ``LAYOUTS``), on x's device."""
    n, c, h, w = x.shape
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "misaligned":  # storage offset of one float: the data pointer is 4 bytes off any vector alignment
        buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
        buf[1:] = x.reshape(-1)
        return buf[1:].view(n, c, h, w)
    if kind == "misaligned_cl":  # channels_last with a storage offset of 3 elements
        buf = torch.empty(x.numel() + 3, dtype=x.dtype, device=x.device)
        buf[3:] = x.permute(0, 2, 3, 1).reshape(-1)
        return buf[3:].view(n, h, w, c).permute(0, 3, 1, 2)
    if kind == "channel_slice":  # channel stride 2*H*W, width stride 1
        big = torch.zeros(n, 2 * c, h, w, dtype=x.dtype, device=x.device)
        big[:, ::2] = x
        return big[:, ::2]
    if kind == "width_slice":  # width stride 2: the fully strided path
        big = torch.zeros(n, c, h, 2 * w, dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        return big[..., ::2]
    if kind == "transposed":  # H and W strides swapped
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if kind == "contiguous":
        return x.contiguous()
    raise ValueError(f"unknown layout {kind!r} (one of {LAYOUTS})")
