"""A float conv run by oneDNN into its own channel-blocked layout, handed on as it lies in memory.

``F.conv2d`` asks oneDNN for an output in the input's layout (NCHW or channels_last). For the ImageNet stem (3 input
channels, 7×7 stride 2) oneDNN's fastest kernel writes a channel-blocked output instead (``nChw8c`` on AVX2,
``nChw16c`` on AVX-512: blocks of 8 or 16 channels, each an (H, W, block) plane), about 25 % faster on a Zen 3
than its channels_last kernel; converting that output back to a dense layout (``to_dense``) costs more than the conv.
:func:`blocked_conv2d` returns it as a dense ``(N, C/B, H, W, B)`` view of oneDNN's buffer, which the C++ max-pool
(:func:`zoo.kernels.channels_last.pooled_affine_prelu`) reads directly. The result equals ``F.conv2d``'s up to
float rounding (the two kernels sum in different orders).

PyTorch cannot say which layout oneDNN picked, so the first call per input shape runs the conv once on a probe whose
every output value names its own (channel, row, column), and reads the layout off the buffer; a layout other than a
channel-blocked one (or none, where PyTorch has no oneDNN) makes :func:`blocked_conv2d` return ``None``.
"""

from __future__ import annotations

import threading

import torch
import torch.nn as nn

from zoo.kernels._weight_cache import DerivedWeightCache
from zoo.kernels.binary import _select

_onednn_weights = DerivedWeightCache()
_layout_lock = threading.Lock()
_block_sizes: dict[tuple, int | None] = {}  # (conv geometry, input shape) -> channels per block, None: not blocked


def blocked_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """``conv(x)`` as a contiguous ``(N, C/B, OH, OW, B)`` tensor (channel ``c`` of pixel ``(h, w)`` at
    ``[n, c // B, h, w, c % B]``), computed by oneDNN's channel-blocked kernel; ``None`` where that does not apply
    (no oneDNN or no C++ extension, autograd on, not a plain float32 CPU conv, or oneDNN chose another layout)."""
    ext, _ = _select()
    if ext is None or not _takes(conv, x):
        return None
    key = (conv.weight.shape, conv.stride, conv.padding, tuple(x.shape))
    with _layout_lock:
        known = key in _block_sizes
        block = _block_sizes.get(key)
    if not known:
        block = _probe_block_size(ext, conv, tuple(x.shape))
        with _layout_lock:
            _block_sizes[key] = block
    if block is None:
        return None
    out = _run(ext, conv, conv.weight, conv.bias, x)
    n, c, h, w = out.shape
    return ext.onednn_buffer(out).view(n, c // block, h, w, block)


def _takes(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    plain_conv = (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.dtype is torch.float32
    )
    return (
        plain_conv
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and x.device.type == "cpu"
        and x.dtype is torch.float32
        and x.dim() == 4
    )


def _run(ext, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """oneDNN's conv of ``x`` (any dense layout) with ``weight``: an mkldnn-layout tensor in oneDNN's chosen layout."""
    packed = _onednn_weights.get(weight, (conv.stride, conv.padding), lambda: _reorder(conv, weight))
    return torch.mkldnn_convolution(
        x.contiguous().to_mkldnn(), packed, bias, conv.padding, conv.stride, conv.dilation, conv.groups
    )


def _reorder(conv: nn.Conv2d, weight: torch.Tensor) -> torch.Tensor:
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.detach().to_mkldnn(), conv.padding, conv.stride, conv.dilation, conv.groups
    )


def _probe_block_size(ext, conv: nn.Conv2d, shape: tuple[int, ...]) -> int | None:
    """Channels per block of the layout oneDNN writes ``conv``'s output in for inputs of ``shape``, or ``None``.

    The probe's weights are zero but for tap (ph, pw) of input channel 0, which reads input pixel (oh·sh, ow·sw);
    that pixel holds ``oh·OW + ow`` and output channel ``c`` adds the bias ``c·OH·OW``, so every output value is its
    own index in NCHW order, exactly (a sum of zeros and one integer below 2**24)."""
    (c_out, _, kh, kw), (sh, sw), (ph, pw) = conv.weight.shape, conv.stride, conv.padding
    n, _, h, w = shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if c_out * oh * ow >= 2**24 or oh < 1 or ow < 1 or ph >= kh or pw >= kw:
        return None
    weight = torch.zeros(conv.weight.shape)
    weight[:, 0, ph, pw] = 1.0
    bias = torch.arange(c_out, dtype=torch.float32) * (oh * ow)
    x = torch.zeros(shape)
    x[:, 0, : oh * sh : sh, : ow * sw : sw] = torch.arange(oh * ow, dtype=torch.float32).view(oh, ow)
    try:
        raw = ext.onednn_buffer(_run(ext, conv, weight, bias, x)).view(n, -1)
    except RuntimeError:  # a padded layout, or a oneDNN that refuses the shape
        return None
    index = torch.arange(c_out * oh * ow, dtype=torch.float32).view(c_out, oh, ow)
    for block in (8, 16):
        if c_out % block == 0:
            expected = index.view(c_out // block, block, oh, ow).permute(0, 2, 3, 1).reshape(-1)
            if torch.equal(raw, expected.expand_as(raw)):
                return block
    return None
