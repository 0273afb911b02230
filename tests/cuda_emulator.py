"""The CUDA binary-conv kernels (zoo/kernels/cuda/binary_conv_cuda.cu) compiled as host C++ and run on the CTA
emulator in ``tests/cuda_emulation`` (see ``scheduler.cpp`` there), called through ctypes.

Lets the kernels' indexing, tiling, pipeline and fragment logic be tested on machines without a GPU. What it cannot
tell: timing, the hardware's actual instruction semantics beyond the PTX ISA text the emulator models, and nvcc's code
generation (the nvcc build and the GPU tests in test_cuda_kernel.py cover those where they can run).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EMULATION_DIR = Path(__file__).resolve().parent / "cuda_emulation"
KERNEL_SOURCE = ROOT / "zoo" / "kernels" / "cuda" / "binary_conv_cuda.cu"
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}  # binary_conv_cuda.h's DType
NUM_CONFIGS = 4
_CONV_FIELDS = ["N", "H", "W", "C", "CW", "O", "KH", "KW", "sh", "sw", "ph", "pw", "OH", "OW", "KP"]


class ConvParams(ctypes.Structure):
    _fields_ = [
        *[(name, ctypes.c_void_p) for name in ("act", "w", "wtab", "out")],
        *[(name, ctypes.c_int64) for name in _CONV_FIELDS],
        *[(name, ctypes.c_void_p) for name in ("scale", "bias", "residual", "slope")],
        ("clamp", ctypes.c_int),
        ("lo", ctypes.c_float),
        ("hi", ctypes.c_float),
    ]


class PackParams(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p),
        *[(name, ctypes.c_int64) for name in ("N", "C", "H", "W", "sN", "sC", "sH", "sW")],
        ("th", ctypes.c_void_p),
        ("thN", ctypes.c_int64),
        ("out", ctypes.c_void_p),
        ("CW", ctypes.c_int64),
    ]


def compiler() -> str | None:
    """The C++ compiler (``$CXX``, else ``c++`` / ``g++``), or None."""
    return shutil.which(os.environ.get("CXX", "")) or shutil.which("c++") or shutil.which("g++")


def build(out_dir: Path, kernel_source: Path = KERNEL_SOURCE) -> Path:
    """Compile ``kernel_source`` (the real kernels, or a copy to test the emulator itself) with the emulator."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    lib = out_dir / "cuda_emulation.so"
    # kernels_on_host.cpp includes "binary_conv_cuda.cu": the first directory on the include path that has one wins
    include = [EMULATION_DIR / "include", EMULATION_DIR, kernel_source.parent, KERNEL_SOURCE.parent]
    sources = [str(EMULATION_DIR / "scheduler.cpp"), str(EMULATION_DIR / "kernels_on_host.cpp")]
    cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-fvisibility=hidden", *(f"-I{d}" for d in include),
           "-o", str(lib), *sources]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the CUDA emulation failed:\n{done.stderr[-4000:]}")
    return lib


class EmulatedKernels:
    """The emulated kernels of one build, with the launch logic of binding.cpp / binary_conv_cuda.cu."""

    def __init__(self, lib: Path):
        self.lib = ctypes.CDLL(str(lib))
        self.lib.zoo_emu_first_error.restype = ctypes.c_char_p
        self.lib.zoo_emu_error_count.restype = ctypes.c_long

    def _check(self, rc: int, what: str) -> None:
        errors, first = self.lib.zoo_emu_error_count(), self.lib.zoo_emu_first_error().decode()
        self.lib.zoo_emu_clear_errors()
        if rc != 0 or errors:
            raise AssertionError(f"{what}: the emulator stopped or reported {errors} misuse(s) of CUDA; first: {first}")

    def pack(self, x: torch.Tensor, threshold: torch.Tensor | None, max_blocks: int = 1 << 20, seed: int = 0):
        """The sign-and-pack kernels on ``x`` (any strides) -> int64 ``[N, H, W, CW]``."""
        n, c, h, w = x.shape
        cw = (c + 63) // 64
        out = torch.full((n, h, w, cw), 0x5A5A5A5A5A5A5A5A, dtype=torch.int64)
        th = None if threshold is None else threshold.to(x.dtype).contiguous()
        params = PackParams(x.data_ptr(), n, c, h, w, *x.stride(), th.data_ptr() if th is not None else None,
                            c if th is not None and th.dim() == 2 else 0, out.data_ptr(), cw)  # fmt: skip
        self._check(self.lib.zoo_emu_pack(ctypes.byref(params), DTYPES[x.dtype], max_blocks, seed), "pack")
        return out

    def _conv(self, run, act: torch.Tensor, weights: torch.Tensor, wtab: torch.Tensor | None, geometry: dict,
              what: str, epilogue: dict | None) -> torch.Tensor:  # fmt: skip
        n, h, w, cw = act.shape
        m = n * geometry["OH"] * geometry["OW"]
        guard = 64  # NaN on both sides of the output: a write outside it, or an element never written, stays visible
        buf = torch.full((m * geometry["O"] + 2 * guard,), float("nan"))
        params = ConvParams(act.data_ptr(), weights.data_ptr(), wtab.data_ptr() if wtab is not None else None,
                            buf[guard:].data_ptr(), N=n, H=h, W=w, CW=cw, **geometry)  # fmt: skip
        terms = _epilogue_terms(params, epilogue or {})  # kept alive until the call returns
        self._check(run(ctypes.byref(params)), what)
        del terms
        if not (buf[:guard].isnan().all() and buf[-guard:].isnan().all()):
            raise AssertionError(f"{what}: wrote outside the output tensor")
        return buf[guard:-guard].view(n, geometry["OH"], geometry["OW"], geometry["O"]).permute(0, 3, 1, 2)

    def conv_mma(self, act, wq, wtab, geometry: dict, config: int, avec: int, seed: int = 0, epilogue=None):
        """The tensor-core conv (prepared weights ``wq``, ``wtab``) -> float32 ``(N, O, OH, OW)`` (NHWC memory).

        ``epilogue``: optional ``scale``, ``bias``, ``residual`` (output-shaped), ``prelu_weight`` tensors and
        ``clamp`` (lo, hi), as :func:`zoo.kernels.binary_conv2d` takes them."""
        run = lambda params: self.lib.zoo_emu_conv_mma(params, config, avec, seed)  # noqa: E731
        geometry = {**geometry, "KP": wq.shape[1]}
        return self._conv(run, act, wq, wtab, geometry, f"conv_mma config {config} avec {avec}", epilogue)

    def conv_simt(self, act, packed_weight, geometry: dict, seed: int = 0, epilogue=None) -> torch.Tensor:
        """The CUDA-core conv (packed OHWI weights) -> float32 ``(N, O, OH, OW)``; ``epilogue`` as for conv_mma."""
        run = lambda params: self.lib.zoo_emu_conv_simt(params, seed)  # noqa: E731
        return self._conv(run, act, packed_weight, None, {**geometry, "KP": 0}, "conv_simt", epilogue)


def _epilogue_terms(params: ConvParams, epilogue: dict) -> list[torch.Tensor]:
    """Point ``params`` at the epilogue's operands laid out as the binding lays them out; return them (to keep)."""
    o = params.O
    kept = []

    def point(name: str, t: torch.Tensor) -> None:
        kept.append(t)
        setattr(params, name, t.data_ptr())

    if "scale" in epilogue or "bias" in epilogue:
        point("scale", epilogue.get("scale", torch.ones(o)).float().contiguous())
        point("bias", epilogue.get("bias", torch.zeros(o)).float().contiguous())
    if epilogue.get("residual") is not None:
        point("residual", epilogue["residual"].permute(0, 2, 3, 1).contiguous())
    if epilogue.get("prelu_weight") is not None:
        point("slope", epilogue["prelu_weight"].reshape(-1).expand(o).contiguous())
    if epilogue.get("clamp") is not None:
        params.clamp, (params.lo, params.hi) = 1, epilogue["clamp"]
    return kept
