"""CUDA binary 2-D convolution, bit-exact with :func:`zoo.kernels.binary_conv2d` (same packed layouts and semantics).

- :func:`cuda_pack_activations`: fused sign-and-pack of a real CUDA ``(N, C, H, W)`` tensor (any strides, float32 /
  float16 / bfloat16 / float64, thresholds ``[C]`` or ``[N, C]``) into NHWC int64 words ``[N, H, W, ceil(C/64)]``.
- :func:`cuda_binary_conv2d`: ``F.conv2d(sign(x - threshold), sign(w), stride, padding)`` with the binarized input
  zero-padded, on tensor cores (``mma.sync.m16n8k256 .b1 .and.popc``, sm_80+: A100/A10/L4/RTX 30-40, H100/H200) or,
  with ``algo="simt"``, on CUDA cores (``__popcll``). float32 result in channels_last memory format.

Weights come from :func:`zoo.kernels.pack_weights` (OHWI words; on any device). The tensor-core path needs them in a
prepared form (tail bits masked, K padded to 8 words, per-tap popcount prefix sums: :func:`prepare_weights`), which is
cached per packed-weight tensor like the CPU kernel's blocked weights.

Nothing here builds or touches CUDA unless :func:`torch.cuda.is_available`; :func:`cuda_kernel_available` says
whether a CUDA tensor can take this path (the extension loads and the device has SASS for it: compute capability 8.x
or 9.0).
"""

from __future__ import annotations

import torch

from zoo.kernels._args import check_activation, conv_geometry, threshold_tensor
from zoo.kernels._weight_cache import DerivedWeightCache
from zoo.kernels.cuda._build import load_error, load_extension

__all__ = [
    "cuda_binary_conv2d",
    "cuda_kernel_available",
    "cuda_kernel_unavailable_reason",
    "cuda_pack_activations",
    "device_supported",
    "prepare_weights",
]

_ALGOS = ("auto", "mma", "simt")


def device_supported(device: torch.device | int | str | None = None) -> bool:
    """True when the build has code for this GPU: sm_80 SASS runs on every 8.x device, sm_90 SASS on 9.0 only."""
    if not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability(device)
    return major == 8 or (major, minor) == (9, 0)


def cuda_kernel_available(device: torch.device | int | str | None = None) -> bool:
    """Whether :func:`cuda_binary_conv2d` can run on ``device`` (default: the current one). Builds the extension at
    the first call on a machine with a supported GPU."""
    return device_supported(device) and load_extension() is not None


def cuda_kernel_unavailable_reason() -> str | None:
    """Why the CUDA extension is unavailable, if it is."""
    return load_error()


def _ext(device: torch.device):
    if not device_supported(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise RuntimeError(
            f"the CUDA binary-conv kernels are built for sm_80 (8.x GPUs) and sm_90 (9.0) only; {device} is compute "
            f"capability {major}.{minor}. Call zoo.kernels.binary_conv2d instead: on such a GPU it computes the same "
            "result with PyTorch ops"
        )
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"the CUDA binary-conv extension is unavailable ({load_error() or 'unknown reason'})")
    return ext


# ---------------------------------------------------------------------------------------------------------------
# Weights.
# ---------------------------------------------------------------------------------------------------------------

_BITS = torch.arange(64, dtype=torch.int64)


def _popcount64(words: torch.Tensor) -> torch.Tensor:
    """Per-element popcount of int64 words (any device), as int64."""
    return ((words.unsqueeze(-1) >> _BITS.to(words.device)) & 1).sum(dim=-1)


def prepare_weights(packed: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed OHWI weights ``[O, KH, KW, CW]`` -> the tensor-core kernel's operands, on ``packed``'s device:

    - ``wq``: int64 ``[O, KP]``, the words in K order (tap-major, then word; i.e. the OHWI order), the bits past
      ``in_channels`` cleared, zero-padded to ``KP = ceil(KH*KW*CW / 8) * 8`` words;
    - ``wtab``: int32 ``[O, (KH+1)*(KW+1)]``, ``wtab[o, i*(KW+1) + j] = sum over kh < i, kw < j of popcount(w[o, kh,
      kw, :])``, so the popcount of any rectangle of taps (the taps inside the image) is 4 lookups.
    """
    if packed.dtype != torch.int64 or packed.dim() != 4:
        raise ValueError(f"packed weights must be int64 [O, KH, KW, CW], got {tuple(packed.shape)} {packed.dtype}")
    o, kh, kw, cw = packed.shape
    if cw != (in_channels + 63) // 64:
        raise ValueError(
            f"packed weights hold {cw} words per tap, in_channels={in_channels} needs {(in_channels + 63) // 64}"
        )
    kwords = kh * kw * cw
    kp = (kwords + 7) // 8 * 8
    words = packed.reshape(o, kh * kw, cw).clone()
    tail = in_channels % 64
    if tail:
        words[..., -1] &= (1 << tail) - 1
    wq = torch.zeros(o, kp, dtype=torch.int64, device=packed.device)
    wq[:, :kwords] = words.reshape(o, kwords)
    pops = _popcount64(words).sum(dim=-1).reshape(o, kh, kw)
    wtab = torch.zeros(o, kh + 1, kw + 1, dtype=torch.int64, device=packed.device)
    wtab[:, 1:, 1:] = pops.cumsum(dim=1).cumsum(dim=2)
    return wq.contiguous(), wtab.reshape(o, -1).to(torch.int32).contiguous()


_prepared_weights = DerivedWeightCache()


def _prepared(packed: torch.Tensor, in_channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prepare_weights` of ``packed`` on ``device``, cached per tensor object (invalidated by in-place edits;
    inference tensors carry no version counter and are prepared at every call)."""
    return _prepared_weights.get(
        packed, (str(device), in_channels), lambda: prepare_weights(packed.detach().to(device), in_channels)
    )


# ---------------------------------------------------------------------------------------------------------------
# Activations and convolution.
# ---------------------------------------------------------------------------------------------------------------


def cuda_pack_activations(x: torch.Tensor, threshold: torch.Tensor | float | None = None) -> torch.Tensor:
    """Fused sign-and-pack on the GPU; the same contract as :func:`zoo.kernels.pack_activations`: real ``(N, C, H,
    W)`` -> NHWC words ``[N, H, W, ceil(C/64)]`` (int64), bit = ``x >= threshold`` compared in ``x``'s dtype
    (threshold None -> 0, so -0.0 -> +1 and NaN -> -1), threshold a float, ``[C]`` or ``[N, C]``; any strides."""
    check_activation(x)
    if not x.is_cuda:
        raise ValueError(f"cuda_pack_activations needs a CUDA tensor, got {x.device}")
    tau = threshold_tensor(x, threshold)
    return _ext(x.device).pack_activations(x.detach(), tau)


def cuda_binary_conv2d(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    out_channels: int,
    in_channels: int,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    threshold: torch.Tensor | float | None = None,
    *,
    algo: str = "auto",
    config: int = -1,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    prelu_weight: torch.Tensor | None = None,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """:func:`zoo.kernels.binary_conv2d` for CUDA tensors (same signature and result, bit for bit).

    ``x`` is a real CUDA ``(N, C, H, W)`` tensor (any strides) or packed activations ``[N, H, W, CW]`` (int64);
    ``packed_weight`` comes from :func:`zoo.kernels.pack_weights` (any device; moved and prepared once, cached).
    ``algo``: ``"auto"``/``"mma"`` (tensor cores) or ``"simt"`` (CUDA cores, the reference path); on a GPU the build
    has no code for (compute capability other than 8.x and 9.0) both raise RuntimeError;
    ``config``: tensor-core tile config (-1: heuristic; 0..3 for benchmarks). Any kernel size, stride >= 1 and
    padding >= 0; ``dilation != 1`` and ``groups != 1`` raise NotImplementedError. Inference only (no autograd).
    ``scale``, ``bias``, ``residual``, ``prelu_weight``, ``clamp``: the epilogue of :func:`zoo.kernels.binary_conv2d`,
    fused into the kernels' store with the CPU kernel's float32 steps (so CUDA and CPU results are equal bit for bit).
    """
    kh, kw, sh, sw, ph, pw = conv_geometry(
        packed_weight, out_channels, in_channels, kernel_size, stride, padding, dilation, groups
    )
    if algo not in _ALGOS:
        raise ValueError(f"algo must be one of {', '.join(_ALGOS)}, got {algo!r}")
    if not x.is_cuda:
        raise ValueError(f"cuda_binary_conv2d needs a CUDA input, got {x.device}")
    cw = (in_channels + 63) // 64
    ext = _ext(x.device)
    if x.dtype is torch.int64:
        if x.dim() != 4 or x.shape[-1] != cw:
            raise ValueError(f"packed activations must be int64 [N, H, W, {cw}], got {tuple(x.shape)}")
        if threshold is not None:
            raise ValueError("a threshold cannot be applied to already packed activations")
        act = x
    else:
        check_activation(x)
        if x.shape[1] != in_channels:
            raise ValueError(f"input has {x.shape[1]} channels, in_channels={in_channels}")
        act = ext.pack_activations(x.detach(), threshold_tensor(x, threshold))
    h, w = act.shape[1], act.shape[2]
    if h < 1 or w < 1:
        raise ValueError(f"the input needs a spatial size >= 1, got {h}x{w}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"input {h}x{w} with padding ({ph}, {pw}) is smaller than the kernel {kh}x{kw}")
    lo, hi = (None, None) if clamp is None else clamp
    epilogue = {"scale": scale, "bias": bias, "residual": residual, "prelu_weight": prelu_weight,
                "clamp_min": lo, "clamp_max": hi}  # fmt: skip
    if algo == "simt":
        wp = packed_weight.detach().to(x.device)
        return ext.conv_simt(act, wp, out_channels, in_channels, kh, kw, sh, sw, ph, pw, **epilogue)
    if not -1 <= config < ext.num_configs():
        # Checked here, not only in C++: on the H200 image a failing TORCH_CHECK that formats an integer crashed the
        # process (SIGSEGV in basic_ostream::_M_insert<long> inside the extension) instead of raising.
        raise RuntimeError(f"unknown tile config {config}: use -1 (heuristic) or 0..{ext.num_configs() - 1}")
    wq, wtab = _prepared(packed_weight, in_channels, x.device)
    return ext.conv_mma(act, wq, wtab, out_channels, in_channels, kh, kw, sh, sw, ph, pw, config, **epilogue)
