"""Post-training static int8 quantization for x86 CPUs: the deployment a 1-bit checkpoint is really compared with.

Both benches use it: ``zoo bench kernels`` on torchvision's quantizable resnet18 (eager mode, its own fusions) and
``zoo bench <id>`` on a checkpoint's dense parent (FX graph mode, which fuses conv+BN+ReLU of any traceable model).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def x86_engine() -> str | None:
    """The quantized engine for x86 CPUs this torch build has (``x86``, else ``fbgemm``), or None."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


@contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Run int8 modules on ``engine`` inside the block (the setting is process-wide; restored after)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextmanager
def quiet_ptq_warnings() -> Iterator[None]:
    """Hide torch.ao.quantization's own deprecation notes, printed once per module otherwise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"torch\.ao\.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", r"Please use quant_min and quant_max", UserWarning)
        warnings.filterwarnings("ignore", r"torch\.quantize_per_tensor, torch\.quantize_per_channel", UserWarning)
        yield


def quantize_int8_fx(model: torch.nn.Module, calibration: torch.Tensor, engine: str) -> torch.nn.Module:
    """``model`` (float, eval mode; left untouched) statically quantized to int8 for ``engine``: FX graph mode with
    the engine's default qconfig mapping, observers calibrated on the ``calibration`` batch. Run the result inside
    ``quantized_engine(engine)``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    try:
        with quiet_ptq_warnings(), quantized_engine(engine):
            prepared = prepare_fx(
                copy.deepcopy(model).eval(), get_default_qconfig_mapping(engine), example_inputs=(calibration[:1],)
            )
            with torch.no_grad():
                prepared(calibration)
            return convert_fx(prepared)
    finally:
        _forget_fx_modules()


def _forget_fx_modules() -> None:
    """Empty torch.ao's unbounded ``functools.cache`` keyed by module (``assert_and_get_unique_device``): it kept
    every model quantized in the process alive, about 6 MB per ResNet-20 ``zoo bench`` round."""
    from torch.ao.quantization.fx import utils

    cached = getattr(utils, "assert_and_get_unique_device", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()
