"""Packed binary 2-D convolution for CPU inference, bit-exact with the zoo's ``BinaryConv2d`` forward.

Semantics: ``binary_conv2d(x, pack_weights(w), ...) == F.conv2d(sign(x - tau), sign(w), stride, padding)`` where
sign has the zoo's tie rule (``v >= 0 -> +1``, else ``-1``; ``-0.0 -> +1``, NaN -> -1), the *binarized* input is
zero-padded (a padding tap contributes 0, not +-1), no scaling factors, ``groups = 1``, ``dilation = 1``. The result
is float32 (small integers, exact), in channels_last memory format from the C++ kernel.

Epilogue: ``binary_conv2d(..., scale=s, bias=b, residual=r, prelu_weight=a, clamp=(lo, hi))`` applies, in the same
pass over the output and in this order, each step that is given: ``conv * s + b`` per channel (float32 ``[O]`` each,
e.g. a folded eval-mode BatchNorm; rounded once per element, a fused multiply-add), ``+ r`` (a residual of the
output's shape), PReLU with slopes ``a`` and ``clamp(lo, hi)`` (Hardtanh). Each step is one float32 operation, so
the result equals PyTorch's ops applied one after another (a BN, ``+``, ``F.prelu``, ``torch.clamp``; a BN that
rounds twice aside, see :func:`zoo.inference.to_inference`). Without them the result is the exact conv as above.

Bit layout (int64 tensors holding uint64 words; channel ``c`` is bit ``c % 64`` of word ``c // 64``, 1 <-> +1, the
bits past the channel count are 0):

- :func:`pack_weights`: real OIHW ``(O, C, KH, KW)`` -> ``[O, KH, KW, ceil(C/64)]`` (OHWI), bit = ``w >= 0``;
- :func:`pack_activations`: real ``(N, C, H, W)`` (any strides, channels_last included) -> ``[N, H, W, ceil(C/64)]``
  (NHWC), bit = ``x >= threshold`` with a threshold of shape ``[C]`` (per input channel) or ``[N, C]`` (per sample
  and channel), default 0. The comparison runs in ``x``'s dtype (the threshold is cast to it).

Folding shifts into thresholds: a layer that binarizes ``x + s`` (SD-BNN's ASD shift ``s = SE(x)`` of shape
``[N, C]``, ReActNet's RSign bias of shape ``[C]``) packs with ``threshold = -s``: in IEEE arithmetic with
gradual underflow (torch's default; not under ``torch.set_flush_denormal(True)``) ``x + s >= 0`` holds exactly
when ``x >= -s``, so the bits equal ``sign(x + s)`` bit for bit.

Backends: a C++ extension (built at first use, see :mod:`zoo.kernels._build`) with AVX-512 VPOPCNTDQ, AVX2 and
scalar code paths chosen at run time, and a pure-PyTorch fallback with the same results (used for non-CPU tensors,
when the extension cannot be built, or when ``ZOO_DISABLE_KERNELS=1``). ``ZOO_KERNEL_ISA=auto|scalar|avx2|avx512|
torch`` (or :func:`set_kernel_isa`) forces one path; both are read at every call.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from zoo.kernels._args import check_activation, conv_geometry, threshold_tensor
from zoo.kernels._build import kernels_disabled, load_error, load_extension
from zoo.kernels._weight_cache import DerivedWeightCache

__all__ = [
    "available_isas",
    "binary_conv2d",
    "kernel_backend",
    "pack_activations",
    "pack_weights",
    "set_kernel_isa",
    "unpack_activations",
    "unpack_weights",
]

_ISA_ALIASES = {
    "": "auto",
    "auto": "auto",
    "scalar": "scalar",
    "avx2": "avx2",
    "avx512": "avx512",
    "avx512-vpopcntdq": "avx512",
    "torch": "torch",
    "fallback": "torch",
    "torch-fallback": "torch",
}
_ISA_CODES = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}
_BACKEND_NAMES = {"scalar": "scalar", "avx2": "avx2", "avx512": "avx512-vpopcntdq"}
_isa_override: str | None = None


def set_kernel_isa(isa: str | None) -> None:
    """Force a code path for this process (``auto``, ``scalar``, ``avx2``, ``avx512``, ``torch``); None: use the
    ``ZOO_KERNEL_ISA`` environment variable again."""
    global _isa_override
    if isa is not None and isa.strip().lower() not in _ISA_ALIASES:
        raise ValueError(f"unknown kernel ISA '{isa}', use one of auto, scalar, avx2, avx512, torch")
    _isa_override = None if isa is None else _ISA_ALIASES[isa.strip().lower()]


@contextmanager
def kernel_isa(isa: str) -> Iterator[None]:
    """Run the zoo's kernels on ``isa``'s code path inside the block (``set_kernel_isa``), the previous choice after."""
    previous = _isa_override
    set_kernel_isa(isa)
    try:
        yield
    finally:
        set_kernel_isa(previous)


def _requested_isa() -> str:
    if _isa_override is not None:
        return _isa_override
    raw = os.environ.get("ZOO_KERNEL_ISA", "auto").strip().lower()
    if raw not in _ISA_ALIASES:
        raise ValueError(f"ZOO_KERNEL_ISA='{raw}' is not one of auto, scalar, avx2, avx512, torch")
    return _ISA_ALIASES[raw]


_select_memo: dict[tuple, tuple] = {}


def _select():
    """(extension or None, ISA code) for the current settings; raises if a forced ISA is missing on this CPU.

    Memoised on the raw settings (two environment reads per call), so switching them at run time still works.
    """
    env = os.environ
    key = (env.get("ZOO_DISABLE_KERNELS"), env.get("ZOO_KERNEL_ISA"), _isa_override)
    hit = _select_memo.get(key)
    if hit is not None:
        return hit
    result: tuple = (None, 0)
    if not kernels_disabled():
        isa = _requested_isa()
        ext = None if isa == "torch" else load_extension()
        if ext is not None:
            if isa != "auto" and _BACKEND_NAMES[isa] not in ext.available_isas():
                raise RuntimeError(
                    f"kernel ISA '{isa}' was requested (ZOO_KERNEL_ISA / set_kernel_isa) but this CPU only supports "
                    f"{', '.join(ext.available_isas())}"
                )
            result = (ext, _ISA_CODES[isa])
    if len(_select_memo) > 64:
        _select_memo.clear()
    _select_memo[key] = result
    return result


def available_isas() -> tuple[str, ...]:
    """The C++ code paths this CPU can run (e.g. ``('scalar', 'avx2', 'avx512-vpopcntdq')``); empty when the
    extension is disabled or unavailable."""
    if kernels_disabled():
        return ()
    ext = load_extension()
    return () if ext is None else tuple(ext.available_isas())


def kernel_backend() -> str:
    """The path :func:`binary_conv2d` takes for CPU tensors now: ``avx512-vpopcntdq``, ``avx2``, ``scalar`` or
    ``torch-fallback``."""
    ext, code = _select()
    if ext is None:
        return "torch-fallback"
    return ext.best_isa() if code == 0 else _BACKEND_NAMES[_requested_isa()]


def kernel_unavailable_reason() -> str | None:
    """Why the C++ extension failed to build or load, if it did."""
    return load_error()


# ---------------------------------------------------------------------------------------------------------------
# Packing (PyTorch reference implementations double as the fallback).
# ---------------------------------------------------------------------------------------------------------------

_SHIFTS = torch.arange(64, dtype=torch.int64)


def _pack_last_dim(bits: torch.Tensor) -> torch.Tensor:
    """bool [..., C] -> int64 [..., ceil(C/64)] words, channel c at bit c % 64 of word c // 64."""
    c = bits.shape[-1]
    cw = (c + 63) // 64
    padded = F.pad(bits.to(torch.int64), (0, cw * 64 - c))
    words = padded.reshape(*bits.shape[:-1], cw, 64) << _SHIFTS.to(bits.device)
    return words.sum(dim=-1)  # distinct powers of two: the int64 sum is the two's-complement bit pattern


def _unpack_last_dim(words: torch.Tensor, channels: int) -> torch.Tensor:
    """int64 [..., CW] -> ±1 float32 [..., channels]."""
    bits = (words.unsqueeze(-1) >> _SHIFTS.to(words.device)) & 1
    bits = bits.reshape(*words.shape[:-1], words.shape[-1] * 64)[..., :channels]
    return bits.to(torch.float32) * 2 - 1


def _check_conv_weight(weight: torch.Tensor) -> None:
    if weight.dim() != 4 or not weight.is_floating_point() or weight.numel() == 0:
        raise ValueError(f"expected a non-empty real (O, C, KH, KW) weight, got {tuple(weight.shape)} {weight.dtype}")


def pack_weights(weight: torch.Tensor) -> torch.Tensor:
    """Real OIHW weight -> packed OHWI words ``[O, KH, KW, ceil(C/64)]`` (int64), bit 1 <-> ``w >= 0`` (+1).

    Pack once at load time (e.g. ``pack_weights(layer.binary_weight())`` for a BinaryConv2d, so method-specific
    weight shifts such as SD-BNN's WSD are included). The padding correction needs no per-channel data: it is
    derived from the packed words inside the kernel.
    """
    _check_conv_weight(weight)
    ext, _ = _select()
    weight = weight.detach()
    if ext is not None and weight.device.type == "cpu":
        return ext.pack_weights(weight)
    return _pack_last_dim((weight >= 0).permute(0, 2, 3, 1))


def unpack_weights(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_weights`: ``[O, KH, KW, CW]`` words -> ±1 float32 of ``shape = (O, C, KH, KW)``."""
    o, c, kh, kw = (int(s) for s in shape)
    expected = (o, kh, kw, (c + 63) // 64)
    if packed.dtype != torch.int64 or tuple(packed.shape) != expected:
        raise ValueError(f"packed weights for {tuple(shape)} must be int64 {expected}, got {tuple(packed.shape)}")
    return _unpack_last_dim(packed, c).permute(0, 3, 1, 2).contiguous()


def _torch_bits(x: torch.Tensor, tau: torch.Tensor | None) -> torch.Tensor:
    """bool (N, C, H, W): x >= tau, compared in x's dtype."""
    if tau is None:
        return x >= 0
    tau = tau.to(device=x.device, dtype=x.dtype)
    return x >= (tau[:, None, None] if tau.dim() == 1 else tau[:, :, None, None])


def _cuda_kernels(device: torch.device):
    """The CUDA kernels for ``device``, or None (disabled, forced to torch, or no SASS for this GPU)."""
    if kernels_disabled() or _requested_isa() == "torch":
        return None
    from zoo.kernels import cuda as cuda_kernels  # lazy: nothing CUDA is touched on CPU-only machines

    return cuda_kernels if cuda_kernels.cuda_kernel_available(device) else None


def pack_activations(x: torch.Tensor, threshold: torch.Tensor | float | None = None) -> torch.Tensor:
    """Fused sign-and-pack: real ``(N, C, H, W)`` -> NHWC words ``[N, H, W, ceil(C/64)]`` (int64).

    bit = ``x[n, c, h, w] >= threshold`` where threshold is None (0: the zoo's sign tie rule, -0.0 -> +1), a float,
    a ``[C]`` tensor or an ``[N, C]`` tensor (per-sample thresholds, e.g. ``-SE(x)`` for SD-BNN's ASD shift).
    Any strides are accepted (channels_last, slices, expanded tensors).
    """
    check_activation(x)
    tau = threshold_tensor(x, threshold)
    if x.is_cuda and (cuda_kernels := _cuda_kernels(x.device)) is not None:
        return cuda_kernels.cuda_pack_activations(x, threshold)
    ext, code = _select()
    if ext is not None and x.device.type == "cpu":
        return ext.pack_activations(x.detach(), tau, code)
    return _pack_last_dim(_torch_bits(x.detach(), tau).permute(0, 2, 3, 1))


def unpack_activations(packed: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of :func:`pack_activations`: ``[N, H, W, CW]`` words -> ±1 float32 ``(N, channels, H, W)``."""
    if packed.dtype != torch.int64 or packed.dim() != 4 or packed.shape[-1] != (channels + 63) // 64:
        raise ValueError(f"packed activations for {channels} channels must be int64 [N, H, W, {(channels + 63) // 64}]")
    return _unpack_last_dim(packed, channels).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# Convolution.
# ---------------------------------------------------------------------------------------------------------------

_blocked = DerivedWeightCache()


def _blocked_weights(ext, packed: torch.Tensor, isa_code: int) -> torch.Tensor:
    """The kernel's blocked weight layout for ``packed`` on the ISA path ``isa_code`` (the AVX2 path reads nibble
    words), cached per tensor object and layout (invalidated by in-place edits).

    Inference tensors (created under ``torch.inference_mode``) carry no version counter, so they are re-blocked at
    every call (a copy of the packed words); pack weights outside inference mode to get the cache.
    """
    return _blocked.get(packed, ext.weight_layout(isa_code), lambda: ext.block_weights(packed, isa_code))


def binary_conv2d(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    out_channels: int,
    in_channels: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    threshold: torch.Tensor | float | None = None,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    prelu_weight: torch.Tensor | None = None,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``F.conv2d(sign(x - threshold), unpack_weights(packed_weight), stride=stride, padding=padding)``, zero padding,
    then the epilogue steps that are given (see the module docstring).

    ``x`` is a real ``(N, C, H, W)`` tensor (any strides) or packed activations ``[N, H, W, CW]`` from
    :func:`pack_activations`; ``packed_weight`` comes from :func:`pack_weights`. Returns float32 (channels_last
    memory format from the C++ kernel). Any kernel size, stride >= 1 and padding >= 0 (per dimension) are supported;
    ``dilation != 1``, ``groups != 1`` and string paddings raise NotImplementedError. Inference only (no autograd).

    ``scale`` and ``bias``: float32 tensors of shape ``[out_channels]`` on ``x``'s device (either may be omitted:
    ones / zeros), applied in the kernel's epilogue as ``fma(conv, scale[o], bias[o])``; the fallback computes the same
    single rounding in float64. ``residual``: float32, the output's shape ``(N, out_channels, OH, OW)``, any strides
    (channels_last is read in place). ``prelu_weight``: float32 with 1 or ``out_channels`` elements. ``clamp``: a
    ``(min, max)`` pair with min <= max. A wrong type, dtype, shape or device raises TypeError / ValueError.
    """
    geometry = conv_geometry(packed_weight, out_channels, in_channels, kernel_size, stride, padding, dilation, groups)
    kh, kw, sh, sw, ph, pw = geometry
    cw = (in_channels + 63) // 64
    packed_input = x.dtype is torch.int64
    if packed_input:
        if x.dim() != 4 or x.shape[-1] != cw:
            raise ValueError(f"packed activations must be int64 [N, H, W, {cw}], got {tuple(x.shape)}")
        if threshold is not None:
            raise ValueError("a threshold cannot be applied to already packed activations")
        h, w = x.shape[1], x.shape[2]
    else:
        check_activation(x)
        if x.shape[1] != in_channels:
            raise ValueError(f"input has {x.shape[1]} channels, in_channels={in_channels}")
        h, w = x.shape[2], x.shape[3]
    if h < 1 or w < 1:
        raise ValueError(f"the input needs a spatial size >= 1, got {h}x{w}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"input {h}x{w} with padding ({ph}, {pw}) is smaller than the kernel {kh}x{kw}")

    scale, bias = _affine_terms(scale, bias, out_channels, x.device)
    output_shape = (x.shape[0], out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    _check_residual_terms(residual, prelu_weight, clamp, output_shape, x.device)
    tau = None if packed_input or threshold is None else threshold_tensor(x, threshold)
    return run_binary_conv2d(
        x, packed_weight, out_channels, in_channels, geometry, tau, None, scale, bias, residual, prelu_weight, clamp
    )


def _on_cpu_kernel(ext, x: torch.Tensor, packed_weight: torch.Tensor) -> bool:
    return ext is not None and x.is_cpu and packed_weight.is_cpu


def _fuses_asd(ext, x: torch.Tensor, packed_weight: torch.Tensor) -> bool:
    return _on_cpu_kernel(ext, x, packed_weight) and x.dtype is torch.float32


def fuses_asd_threshold(x: torch.Tensor, packed_weight: torch.Tensor) -> bool:
    """Whether :func:`run_binary_conv2d` computes an SE-gate threshold from ``asd_weights`` inside the C++ kernel's
    call for these tensors (a float32 CPU input, the extension loaded); otherwise pass the threshold computed."""
    return _fuses_asd(_select()[0], x, packed_weight)


def run_binary_conv2d(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    out_channels: int,
    in_channels: int,
    geometry: tuple[int, int, int, int, int, int],
    threshold: torch.Tensor | None = None,
    asd_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    prelu_weight: torch.Tensor | None = None,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """:func:`binary_conv2d` without its Python checks, for a caller that checked its geometry
    (:func:`conv_geometry`), its epilogue terms and its input's channels once (``PackedBinaryConv2d``); the C++
    kernel still checks every shape. ``threshold``: a tensor of shape ``[C]`` or ``[N, C]`` or None.

    ``asd_weights = (fc1, fc2)`` instead of a threshold packs against the SE-gate threshold
    ``-sigmoid(fc2 relu(fc1 mean_hw(x)))`` (SD-BNN's activation self-distribution), computed inside the C++ kernel's
    call by the same ATen ops as the PyTorch branch, bit for bit, without the interpreter between them. Only where
    :func:`fuses_asd_threshold` holds; elsewhere the caller computes the threshold and passes it.
    """
    kh, kw, sh, sw, ph, pw = geometry
    ext, code = _select()
    use_ext = _on_cpu_kernel(ext, x, packed_weight)
    if asd_weights is not None and not _fuses_asd(ext, x, packed_weight):
        raise ValueError(
            "asd_weights are only taken by the C++ kernel for a float32 CPU input (see fuses_asd_threshold); "
            "pass the computed threshold instead"
        )
    if use_ext:
        lo, hi = (None, None) if clamp is None else clamp
        fc1, fc2 = (None, None) if asd_weights is None else asd_weights
        blocked = _blocked_weights(ext, packed_weight, code)
        return ext.binary_conv2d(
            x.detach(), threshold, blocked, out_channels, in_channels, kh, kw, sh, sw, ph, pw, code, scale, bias,
            residual, prelu_weight, lo, hi, fc1, fc2,
        )  # fmt: skip
    if x.is_cuda and (cuda_kernels := _cuda_kernels(x.device)) is not None:
        return cuda_kernels.cuda_binary_conv2d(
            x, packed_weight, out_channels, in_channels, (kh, kw), (sh, sw), (ph, pw), threshold=threshold,
            scale=scale, bias=bias, residual=residual, prelu_weight=prelu_weight, clamp=clamp,
        )  # fmt: skip
    # Pure-PyTorch fallback: the same ±1 operands through F.conv2d (exact: integer sums far below 2^24).
    packed_input = x.dtype is torch.int64
    xb = unpack_activations(x, in_channels) if packed_input else _torch_bits(x.detach(), threshold).float() * 2 - 1
    wb = unpack_weights(packed_weight.to(xb.device), (out_channels, in_channels, kh, kw))
    with torch.no_grad():
        out = F.conv2d(xb, wb, None, (sh, sw), (ph, pw))
    return _apply_epilogue(out, scale, bias, residual, prelu_weight, clamp)


def _affine_terms(
    scale: torch.Tensor | None, bias: torch.Tensor | None, out_channels: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The epilogue's (scale, bias), detached, after checking each is None or float32 ``[out_channels]`` on device."""
    terms = []
    for name, t in (("scale", scale), ("bias", bias)):
        if t is not None:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a float32 tensor of shape [{out_channels}] or None, got {type(t)}")
            if t.dtype is not torch.float32:
                raise ValueError(f"{name} must be float32 (the kernels' output dtype), got {t.dtype}")
            if tuple(t.shape) != (out_channels,):
                raise ValueError(f"{name} must have shape [out_channels] = [{out_channels}], got {tuple(t.shape)}")
            if t.device != device:
                raise ValueError(f"{name} is on {t.device} but the input is on {device}")
            t = t.detach()
        terms.append(t)
    return terms[0], terms[1]


def _check_residual_terms(
    residual: torch.Tensor | None,
    prelu_weight: torch.Tensor | None,
    clamp: tuple[float, float] | None,
    output_shape: tuple[int, int, int, int],
    device: torch.device,
) -> None:
    for name, t in (("residual", residual), ("prelu_weight", prelu_weight)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a float32 tensor or None, got {type(t)}")
        if t.dtype is not torch.float32:
            raise ValueError(f"{name} must be float32 (the kernels' output dtype), got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if residual is not None and tuple(residual.shape) != output_shape:
        raise ValueError(f"residual must have the output's shape {output_shape}, got {tuple(residual.shape)}")
    out_channels = output_shape[1]
    if prelu_weight is not None and not (prelu_weight.numel() == 1 or tuple(prelu_weight.shape) == (out_channels,)):
        raise ValueError(f"prelu_weight needs 1 or {out_channels} (out_channels) elements, got {prelu_weight.shape}")
    if clamp is not None and not (
        isinstance(clamp, (tuple, list))
        and len(clamp) == 2
        and all(isinstance(v, numbers.Real) for v in clamp)
        and clamp[0] <= clamp[1]
    ):
        raise ValueError(f"clamp must be a (min, max) pair of numbers with min <= max, got {clamp!r}")


def _apply_epilogue(
    out: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    prelu_weight: torch.Tensor | None,
    clamp: tuple[float, float] | None,
) -> torch.Tensor:
    """The C++ epilogue in PyTorch ops, the same float32 operation at each step.

    ``out * scale + bias`` rounds once like the kernels' FMA: the product of a conv sum (an integer below 2^24) and a
    float32 is exact in float64, so only the sum rounds (to float64, then float32: a double rounding that can differ
    from the FMA about once in 2^29 elements).
    """
    with torch.no_grad():
        if scale is not None or bias is not None:
            y = out.double()
            if scale is not None:
                y = y * scale.double()[:, None, None]
            if bias is not None:
                y = y + bias.double()[:, None, None]
            out = y.float()
        if residual is not None:
            out = out + residual
        if prelu_weight is not None:
            out = F.prelu(out, prelu_weight.reshape(-1))
        if clamp is not None:
            out = out.clamp(*clamp)
    return out
