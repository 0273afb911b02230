"""The input check every zoo model runs before its forward: a clear :class:`~zoo.errors.InputError` for a bad tensor.

:func:`install_input_check` (called once per model by ``build_zoo_model``, so models from ``timm.create_model``,
``torch.hub`` and ``zoo.from_pretrained`` all have it) registers :func:`check_input` as a forward pre-hook. It reads
metadata only (type, ``ndim``, dtype, shape), never the values, so its cost does not depend on the input's size:

- a 4-D ``(N, C, H, W)`` tensor (a 3-D one is told to add the batch dimension);
- a floating dtype: integer images (e.g. uint8 pixels) are told to convert with ``.float()`` and normalise with
  the ``mean``/``std`` of ``model.pretrained_cfg``; a floating dtype other than the stem's weights (float16/bfloat16
  into a float32 model) is refused too, except under ``torch.autocast``, which casts the operands itself;
- ``C`` equal to the stem conv's ``in_channels`` (read at every call, so a replaced stem is followed); for 1 vs 3
  channels the message names ``in_chans=`` at creation and the conversion of the images;
- the spatial size: exactly ``img_size`` for a model whose flattening head fixes it (``fixed_input_size``,
  VGG-Small), otherwise at least the network's output stride (its total downsampling, the largest
  ``feature_info`` reduction: 4 for the CIFAR ResNets, 8 for the CIFAR ResNet-18s, 32 for the ImageNet
  ResNet-18s). Below it the last stages run on maps smaller than their stride, made mostly of zero padding.

An empty batch (N = 0) passes and gives an empty ``(0, num_classes)`` output. NaN/Inf values are not checked (it
would cost a pass over the data): they propagate as PyTorch propagates them, and a binary layer's sign maps NaN to
-1 (``NaN >= 0`` is false) in the fake-quant and the packed forms alike.

The check is skipped while ``torch.jit`` traces (the ONNX export) and for ``torch.fx`` proxies. It lives in the
module's hooks, so ``copy.deepcopy``, ``zoo.to_inference`` and pickling keep it. ``features_only`` models get it
on the wrapper timm returns (the minimum then is the largest reduction of the requested taps);
``forward_features``/``forward_intermediates`` called directly do not run it (timm's API, no pre-hook).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from timm.models._features import FeatureInfo
from torch import nn

from zoo.errors import InputError

__all__ = ["InputSpec", "check_input", "input_spec", "install_input_check"]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What :func:`check_input` needs beyond the live model: the stem conv's path and the spatial bounds."""

    first_conv: str | None
    min_size: int
    fixed_size: tuple[int, int] | None = None


def _first_conv_path(model: nn.Module) -> str | None:
    """The stem conv: the cfg's ``first_conv`` (also under a ``features_only`` getter's ``model.``), else the first
    ``nn.Conv2d``."""
    modules = dict(model.named_modules())
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first_conv, str):
        for path in (first_conv, f"model.{first_conv}", first_conv.replace(".", "_")):
            if isinstance(modules.get(path), nn.Conv2d):
                return path
    return next((name for name, m in modules.items() if isinstance(m, nn.Conv2d)), None)


def _output_stride(model: nn.Module) -> int:
    info = getattr(model, "feature_info", None)
    if isinstance(info, FeatureInfo):  # a features_only wrapper: the requested taps
        return max(info.reduction())
    if isinstance(info, list) and info:
        return max(int(f["reduction"]) for f in info)
    return 1


def input_spec(model: nn.Module) -> InputSpec:
    """The spec of a built model (after its ``pretrained_cfg`` is set)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    img_size = getattr(model, "img_size", None)
    fixed = tuple(int(s) for s in img_size) if cfg.get("fixed_input_size") and img_size is not None else None
    return InputSpec(first_conv=_first_conv_path(model), min_size=_output_stride(model), fixed_size=fixed)


def install_input_check(model: nn.Module) -> nn.Module:
    """Give ``model`` its input check (once: a second call only refreshes the spec)."""
    already = hasattr(model, "zoo_input_spec")
    model.zoo_input_spec = input_spec(model)
    if not already:
        model.register_forward_pre_hook(check_input, with_kwargs=True)
    return model


def _name(module: nn.Module) -> str:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") or type(module).__name__
    return f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch


def _stats(module: nn.Module) -> str:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return "the mean/std of model.pretrained_cfg"
    return f"mean={tuple(float(v) for v in mean)}, std={tuple(float(v) for v in std)} from model.pretrained_cfg"


def _channel_fix(expected: int, got: int) -> str:
    fix = f"Fix: create the model with in_chans={got} (timm.create_model(..., in_chans={got}) / zoo.from_pretrained"
    fix += f"(..., in_chans={got})), or pass {expected}-channel images"
    if (expected, got) == (3, 1):
        return fix + " (grayscale to RGB: x.expand(-1, 3, -1, -1))."
    if (expected, got) == (1, 3):
        return fix + " (RGB to grayscale: x.mean(1, keepdim=True))."
    return fix + "."


def check_input(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: raise :class:`InputError` for an input ``module`` cannot take (metadata only)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return None
    x = args[0] if args else kwargs.get("x")
    if isinstance(x, torch.fx.Proxy):
        return None
    if not isinstance(x, torch.Tensor):
        raise InputError(
            f"{_name(module)} takes a torch.Tensor of images (N, C, H, W), got {type(x).__name__}. "
            "Fix: convert it, e.g. torch.as_tensor(array).permute(0, 3, 1, 2).float() for NHWC numpy images."
        )
    spec: InputSpec = module.zoo_input_spec
    if x.ndim != 4:
        hint = "add the batch dimension with x.unsqueeze(0)" if x.ndim == 3 else "reshape it to (N, C, H, W)"
        raise InputError(
            f"{_name(module)} takes a 4-D (N, C, H, W) batch of images, got a {x.ndim}-D tensor of shape "
            f"{tuple(x.shape)}. Fix: {hint}."
        )
    conv = None
    if spec.first_conv is not None:
        try:
            conv = module.get_submodule(spec.first_conv)
        except AttributeError:  # the stem was replaced by something else: nothing to compare with
            conv = None
    if not x.is_floating_point():
        raise InputError(
            f"{_name(module)} takes floating-point images, got dtype {x.dtype}. Fix: convert and normalise them, "
            f"e.g. x = (x.float() / 255 - mean) / std for 0-255 pixels, with {_stats(module)} "
            "(timm.data.resolve_data_config(model=model) and create_transform do it for PIL images)."
        )
    weight = getattr(conv, "weight", None)
    if isinstance(weight, torch.Tensor) and x.dtype != weight.dtype and not _autocast_on(x.device.type):
        raise InputError(
            f"{_name(module)} runs in {weight.dtype} but the input is {x.dtype}. Fix: convert the input with "
            f"x.to({weight.dtype}), convert the model with model.to({x.dtype}), or run it under torch.autocast."
        )
    expected = getattr(conv, "in_channels", None)
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    if expected is not None and c != expected:
        got = f"{_name(module)} expects {expected}-channel images, got {c} channel(s) (input shape {tuple(x.shape)})."
        if w == expected and c > 4:
            raise InputError(f"{got} It looks channels-last (N, H, W, C). Fix: permute it with x.permute(0, 3, 1, 2).")
        raise InputError(f"{got} {_channel_fix(expected, c)}")
    if spec.fixed_size is not None:
        if (h, w) != spec.fixed_size:
            fh, fw = spec.fixed_size
            size = f"img_size={h}" if h == w else f"img_size=({h}, {w})"
            raise InputError(
                f"{_name(module)} was built for {fh}×{fw} inputs (its flattening head fixes the size), got {h}×{w}. "
                f"Fix: resize the images to {fh}×{fw}, or create the model for them with {size} "
                f"(timm.create_model(..., {size}))."
            )
    elif h < spec.min_size or w < spec.min_size:
        m = spec.min_size
        raise InputError(
            f"{_name(module)} needs images of at least {m}×{m} (its output stride, the total downsampling: on "
            f"smaller images its last stages run on maps smaller than their stride, mostly zero padding), got "
            f"{h}×{w}. Fix: resize or pad the images to at least {m}×{m} (its pretrained cfg's input_size is "
            f"{_cfg_size(module)})."
        )
    return None


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        return False


def _cfg_size(module: nn.Module) -> str:
    size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size")
    return "×".join(str(s) for s in size[1:]) if size else "unknown"
