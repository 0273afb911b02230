"""Full-precision inference ops around the binary units, one pass over memory each for float32 channels_last CPU
tensors (C++ in ``cpu/channels_last_ops.cpp``, part of the binary kernels' extension), PyTorch ops elsewhere.

:func:`affine_prelu` is a folded eval-mode BatchNorm's ``fma(x, scale, bias)`` followed by PReLU (the stem of the
ImageNet BNNs: PyTorch runs the two as two passes); :func:`max_pool2d` is PyTorch's max-pool bit for bit without the
int64 index tensor that ``aten::max_pool2d_with_indices`` writes even when nobody asks for it;
:func:`pooled_affine_prelu` is the two in one pass, applying the affine and PReLU on the pooled grid only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.kernels.binary import _ISA_CODES, _apply_epilogue, _select


def _kernel_for(x: torch.Tensor, blocked: bool = False):
    """(extension, ISA code) when the C++ op takes ``x``, else (None, 0). ``blocked``: ``x`` is channel-blocked
    (:func:`unblock`), which the C++ max-pool reads where its blocks are a multiple of 8 channels."""
    ext, code = _select()
    if blocked:
        laid_out = x.dim() == 5 and x.is_contiguous() and x.shape[4] % 8 == 0
    else:
        laid_out = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    takes = ext is not None and x.device.type == "cpu" and x.dtype is torch.float32 and laid_out
    return (ext, code) if takes else (None, 0)


def unblock(x: torch.Tensor) -> torch.Tensor:
    """A channel-blocked ``(N, C/B, H, W, B)`` tensor (:func:`zoo.kernels.blocked_conv.blocked_conv2d`) as the
    channels_last ``(N, C, H, W)`` tensor it stands for (a copy)."""
    n, blocks, h, w, block = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(n, h, w, blocks * block).permute(0, 3, 1, 2)


def affine_prelu(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    prelu_weight: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """``prelu(fma(x, scale[c], bias[c]), prelu_weight)`` per channel (no PReLU for ``prelu_weight=None``), the same
    single-rounding affine as the binary kernels' epilogue. ``scale``, ``bias``: float32 ``[C]``; ``prelu_weight``:
    1 or C elements. The C++ op runs where the CPU has FMA (std::fma is a libm call per element without it).

    ``inplace=True`` lets the C++ op overwrite ``x`` (a temporary nobody else reads): a fresh buffer of the stem's
    size costs its page faults, 26 ms of a 29 ms pass at batch 32 x 64 x 112 x 112. Elsewhere ``x`` is left alone."""
    ext, code = _affine_kernel_for(x)
    if ext is not None:
        return ext.affine_prelu(x, scale, bias, prelu_weight, code, inplace)
    return _apply_epilogue(x, scale, bias, None, prelu_weight, None)


def _affine_kernel_for(x: torch.Tensor, blocked: bool = False):
    """(extension, ISA code) when the C++ affine takes ``x`` (it needs FMA: std::fma is a libm call per element
    without it), else (None, 0)."""
    ext, code = _kernel_for(x, blocked)
    if ext is not None and code != _ISA_CODES["scalar"] and "avx2" in ext.available_isas():
        return ext, code
    return None, 0


def max_pool2d(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding)`` (dilation 1, floor mode), bit for bit; written into ``out``
    (a tensor of the result's shape, channels_last where the C++ op runs) when given, and returned."""
    ext, code = _kernel_for(x)
    if ext is None:
        pooled = F.max_pool2d(x, kernel_size, stride, padding)
        return pooled if out is None else out.copy_(pooled)
    return ext.max_pool2d(x, *kernel_size, *stride, *padding, code, out)


def pooled_affine_prelu(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    prelu_weight: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``max_pool2d(affine_prelu(x, scale, bias, prelu_weight), kernel_size, stride, padding, out)`` bit for bit, in
    one pass where the C++ ops run: each window's max and min of ``x`` decide it (the affine and PReLU are monotone or
    fall then rise, so their maximum over a window is at its smallest or largest input), and the affine and PReLU are
    applied on the pooled grid only. ``x`` is read once and nothing of its size is written.

    ``x`` may also be channel-blocked, ``(N, C/B, H, W, B)`` contiguous with ``B`` a multiple of 8 (oneDNN's layout,
    :func:`zoo.kernels.blocked_conv.blocked_conv2d`): the C++ op reads it as it lies, the result is channels_last."""
    blocked = x.dim() == 5
    ext, code = _affine_kernel_for(x, blocked)
    if ext is None:
        x = unblock(x) if blocked else x
        return max_pool2d(affine_prelu(x, scale, bias, prelu_weight), kernel_size, stride, padding, out)
    return ext.max_pool2d(x, *kernel_size, *stride, *padding, code, out, scale, bias, prelu_weight)
