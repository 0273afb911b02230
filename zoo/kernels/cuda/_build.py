"""Just-in-time build and cached loading of the CUDA binary-conv extension (``torch.utils.cpp_extension.load``).

Compiled for ``sm_80`` (runs on every 8.x GPU: A100, A10, L4, RTX 30/40) and ``sm_90`` (H100/H200) SASS into
``<zoo.kernels._build.cache_dir()>/cuda`` (a directory of its own, since ``cpp_extension`` keeps one ``build.ninja``
per build directory) and reused from there; ``cpp_extension`` rebuilds it only when the sources or flags change, and a
file lock serialises concurrent builds. A build is only attempted when ``torch.cuda.is_available()`` (or when
``force=True``, e.g. to check that the extension compiles and links on a machine without a GPU).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from zoo.kernels._build import cache_dir, kernels_disabled

_DIR = Path(__file__).resolve().parent
SOURCES = [_DIR / "binding.cpp", _DIR / "binary_conv_cuda.cu"]
NAME = "zoo_binary_conv_cuda"
CUDA_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-O3",
]
CFLAGS = ["-O3"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def build_dir() -> Path:
    """``<zoo kernel cache>/<torch version>/<python tag>/cuda``."""
    return cache_dir() / "cuda"


def _ensure_cuda_home() -> None:
    """``cpp_extension`` guesses ``CUDA_HOME`` from ``which nvcc``; when nvcc is a wrapper script outside the toolkit
    (e.g. ``/usr/local/bin/nvcc``) the guess has no headers. Then use ``$CUDA_HOME``, ``$CUDA_PATH`` or
    ``/usr/local/cuda`` if one of them holds the toolkit."""
    import torch.utils.cpp_extension as cpp_ext

    def is_toolkit(path: str | None) -> bool:
        return (
            bool(path)
            and (Path(path) / "include" / "cuda_runtime.h").is_file()
            and (Path(path) / "bin" / "nvcc").is_file()
        )

    if is_toolkit(cpp_ext.CUDA_HOME):
        return
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if is_toolkit(candidate):
            cpp_ext.CUDA_HOME = candidate
            return
    raise RuntimeError(f"no CUDA toolkit (nvcc and headers) found; CUDA_HOME={cpp_ext.CUDA_HOME!r}")


def build(verbose: bool | None = None) -> ModuleType:
    """Compile (or reuse) and import the extension; raises on failure. Needs nvcc (``CUDA_HOME``), not a GPU."""
    from torch.utils.cpp_extension import load

    if torch.version.cuda is None:
        raise RuntimeError("this torch build has no CUDA support")
    _ensure_cuda_home()
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    if verbose is None:
        verbose = os.environ.get("ZOO_KERNEL_VERBOSE", "") == "1"
    return load(
        name=NAME,
        sources=[str(s) for s in SOURCES],
        extra_cflags=CFLAGS,
        extra_cuda_cflags=CUDA_FLAGS,
        extra_include_paths=[str(_DIR)],
        build_directory=str(out),
        verbose=verbose,
    )


def load_extension(force: bool = False) -> ModuleType | None:
    """The compiled CUDA extension, or None when CUDA is unavailable, kernels are disabled, or the build fails (one
    warning names the reason). The result is cached for the process; ``force=True`` builds even without a GPU."""
    if "module" in _state and (_state["module"] is not None or not force):
        return _state["module"]  # type: ignore[return-value]
    if not force:
        if kernels_disabled():
            return None  # not cached: the environment variable is read at every call
        if not torch.cuda.is_available():
            _state.setdefault("error", "torch.cuda.is_available() is False")
            return None
    with _lock:
        if "module" not in _state or (_state["module"] is None and force):
            try:
                _state["module"] = build()
                _state.pop("error", None)
            except Exception as exc:  # any build / import failure -> the caller falls back
                _state["module"] = None
                _state["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
                warnings.warn(
                    "zoo.kernels.cuda: the CUDA binary-conv kernel could not be built or loaded "
                    f"({_state['error']}); CUDA tensors use the pure-PyTorch path instead.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state["module"]  # type: ignore[return-value]


def load_error() -> str | None:
    """Why the extension is unavailable (None if it loaded or was never tried)."""
    return _state.get("error")  # type: ignore[return-value]
