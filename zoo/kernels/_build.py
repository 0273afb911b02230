"""Just-in-time build and cached loading of the C++ CPU kernels (``torch.utils.cpp_extension.load``).

The extension is compiled once per torch version, Python ABI and source version into
``$ZOO_KERNEL_CACHE/<torch version>/<python tag>/cpu-<hash of the sources, their paths and the flags>`` (default cache
``~/.cache/compressed-cnn-zoo/kernels``) and reused from there. The hash keys the build on the sources' content
and paths, not their timestamps: an edited kernel never loads a stale build, and checkouts sharing one cache do not
rebuild over each other (or over a library another process has loaded). A file lock in the build directory
serialises concurrent builds from several processes. One build runs on every x86-64 CPU: the AVX-512 and AVX2 code
is compiled per function (``__attribute__((target(...)))``) and picked at run time.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

_SOURCES = [
    Path(__file__).with_name("cpu") / name
    for name in ("binary_conv.cpp", "sign_estimators.cpp", "channels_last_ops.cpp")
]
_NAME = "zoo_binary_conv_cpu"
_CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-Wno-unused-function"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Build directory: ``$ZOO_KERNEL_CACHE`` or ``~/.cache/compressed-cnn-zoo/kernels``, per torch and Python."""
    base = os.environ.get("ZOO_KERNEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "compressed-cnn-zoo", "kernels"
    )
    tag = f"{sys.implementation.cache_tag}"
    return Path(base) / torch.__version__ / tag


def source_key() -> str:
    """A short hash of the kernel sources' paths and bytes and the compiler flags (raises if a source is missing).

    The paths count because they are part of the build commands: two checkouts of one version at different places
    would otherwise take turns rebuilding the same directory."""
    digest = hashlib.sha256()
    for source in _SOURCES:
        digest.update(str(Path(source).resolve()).encode())
        digest.update(Path(source).read_bytes())
    digest.update(" ".join(_CFLAGS).encode())
    return digest.hexdigest()[:16]


def build_dir() -> Path:
    """Where the CPU extension is built: ``<cache_dir()>/cpu-<source_key()>``."""
    return cache_dir() / f"cpu-{source_key()}"


def kernels_disabled() -> bool:
    """``ZOO_DISABLE_KERNELS=1`` (or true/yes/on) forces the pure-PyTorch fallback."""
    return os.environ.get("ZOO_DISABLE_KERNELS", "").strip().lower() in {"1", "true", "yes", "on"}


def _build() -> ModuleType:
    if sys.platform != "linux" or not any(m in (os.uname().machine or "") for m in ("x86_64", "amd64")):
        raise RuntimeError(f"the CPU kernel targets x86-64 Linux, this is {sys.platform}/{os.uname().machine}")
    from torch.utils.cpp_extension import load

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    return load(
        name=_NAME,
        sources=[str(s) for s in _SOURCES],
        extra_cflags=_CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(out),
        verbose=os.environ.get("ZOO_KERNEL_VERBOSE", "") == "1",
    )


def load_extension() -> ModuleType | None:
    """The compiled extension, or None (with one warning naming the reason) when it cannot be built or loaded.

    The first call builds or loads it (thread-safe); the result, success or failure, is cached for the process.
    """
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if "module" not in _state:
            try:
                _state["module"] = _build()
            except Exception as exc:  # any build / import failure -> fallback
                _state["module"] = None
                _state["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
                warnings.warn(
                    "zoo.kernels: the C++ binary-conv CPU kernel could not be built or loaded "
                    f"({_state['error']}); using the pure-PyTorch fallback (same results, slower). "
                    "Set ZOO_DISABLE_KERNELS=1 to skip the build.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state["module"]  # type: ignore[return-value]


def load_error() -> str | None:
    """Why the extension is unavailable (None if it loaded or was never tried)."""
    return _state.get("error")  # type: ignore[return-value]
