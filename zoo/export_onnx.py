"""ONNX export of zoo models: ``export_onnx(model, path, input_size)``.

The graph is exported with PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the
torch.export-based one (the default since PyTorch 2.9) needs the ``onnxscript`` package, which the zoo does not
depend on. The model is exported in eval mode with a dynamic batch dimension; the spatial size is fixed to
``input_size`` (IR²Net's recovery pools its taps to the final stage's size, a constant of the graph).

Binary networks are exported in their float-equivalent (fake-quant) form, with standard ONNX ops only:
- every activation sign becomes ``Where(x >= 0, 1, -1)`` on float tensors (the zoo's tie rule, sign(0) = +1); the
  quantizers' ``torch.autograd.Function`` s (which only differ in their backward) are not traced;
- every binary weight is folded to the constant it binarizes to, ±1 (SD-BNN's WSD shift applied before the sign,
  as ``zoo.to_inference`` folds it; real-valued for ``binarize_weights=False``). The exporter then folds the
  following BatchNorm into the conv, so a binary filter in the file reads ±(its channel's BN scale);
- SD-BNN's ASD (the per-sample squeeze-excitation shift of the activations before their sign) stays in the graph
  as ordinary ops (ReduceMean, MatMul, Relu, Sigmoid, Add); IR-Net's EDE only shapes gradients, so it has no
  trace in an inference graph;
- IR²Net's recovery pools the earlier stages to the final map's size with constant-size pooling.
An ONNX runtime therefore runs the binary convolutions as float convolutions; there is no 1-bit operator in ONNX.

The packed 1-bit kernels of :func:`zoo.to_inference` (``PackedBinaryConv2d``: bit-packed weights run by the zoo's
popcount extension) are PyTorch-only and are not exported: pass the fake-quant model (the one
``timm.create_model`` / ``zoo.from_pretrained`` return), which computes the same function.
"""

from __future__ import annotations

import copy
import types
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.inference import PackedBinaryConv2d
from zoo.models._binary_base import BinaryClassifier
from zoo.nn import BinaryConv2d, SignQuantizer, hard_sign

__all__ = ["export_onnx"]

INPUT_NAME = "input"


class ExportSign(nn.Module):
    """The eval-mode forward of a :class:`SignQuantizer` as plain ops (ONNX has no custom autograd ops).

    The quantizers' autograd Functions only differ in their backward pass; forward they all compute
    ``hard_sign`` (or nothing, for the ``identity`` estimator), which is what is exported.
    """

    def __init__(self, estimator: str) -> None:
        super().__init__()
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.estimator == "identity" else hard_sign(x)


class _InputOnly(nn.Module):
    """Calls the model with the input alone: the TorchScript exporter would trace keyword defaults as inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x)


def static_adaptive_avg_pool2d(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` with the trace's shapes read as constants, in ops ONNX takes.

    The TorchScript exporter converts adaptive pooling only for a constant output size (``zoo.nn.pool_and_concat``
    passes the final map's traced size) and an input whose spatial size it can infer (lost after the option-A
    shortcuts' strided slices). The graph's spatial size is fixed, so: a plain average pool where the sizes divide
    evenly (every zoo model at its usual input sizes), otherwise adaptive pooling's windows (rows floor(i·H/h) to
    ceil((i+1)·H/h)) as constant averaging matrices, M_h · x · M_wᵀ.
    """
    in_h, in_w = (int(s) for s in x.shape[-2:])
    out_h, out_w = (int(s) for s in size)
    if in_h % out_h == 0 and in_w % out_w == 0:
        kernel = (in_h // out_h, in_w // out_w)
        return x if kernel == (1, 1) else F.avg_pool2d(x, kernel, kernel)
    return _window_means(out_h, in_h, x) @ x @ _window_means(out_w, in_w, x).T


def _window_means(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """n_out × n_in matrix averaging adaptive pooling's window of each output position (a graph constant)."""
    rows = []
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-(i + 1) * n_in // n_out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n_in)])
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _static_fuse(self, stages: list[torch.Tensor]) -> torch.Tensor:
    """``BinaryClassifier.fuse`` (``zoo.nn.pool_and_concat`` then the recovery module) with exportable pooling."""
    if self.recovery is None:
        return stages[-1]
    size = stages[-1].shape[-2:]
    pooled = [static_adaptive_avg_pool2d(t, size) for t in stages[:-1]]
    return self.recovery(torch.cat([*pooled, stages[-1]], dim=1))


def _constant_binary_weight(self) -> torch.Tensor:
    return self.binary_weight_const


def export_form(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with its export-unfriendly parts replaced by plain-op equivalents.

    - every binary convolution's weight becomes the constant it binarizes to (±1, SD-BNN's WSD shift applied
      before the sign, as ``zoo.to_inference`` folds it), so the graph stores ±1 weights, not the latent ones;
    - every :class:`SignQuantizer` becomes :class:`ExportSign` (its forward as plain ops);
    - IR²Net's fusion pools with :func:`static_adaptive_avg_pool2d`.

    Raises ``TypeError`` for a model holding packed binary convolutions (``zoo.to_inference``): they are not
    exportable.
    """
    packed = [name for name, m in model.named_modules() if isinstance(m, PackedBinaryConv2d)]
    if packed:
        raise TypeError(
            f"{type(model).__name__} runs packed 1-bit kernels ({packed[0]}, ...), which are PyTorch-only and cannot "
            "be exported to ONNX: export the fake-quant model (before zoo.to_inference), which computes the same "
            "function"
        )
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, BinaryConv2d):
            with torch.no_grad():
                module.register_buffer("binary_weight_const", module.binary_weight().detach().clone())
            module.binary_weight = types.MethodType(_constant_binary_weight, module)
        for name, child in list(module.named_children()):
            if isinstance(child, SignQuantizer):
                setattr(module, name, ExportSign(child.estimator))
        if isinstance(module, BinaryClassifier) and module.recovery is not None:
            module.fuse = types.MethodType(_static_fuse, module)
    return model


def _output_names(outputs) -> list[str]:
    if isinstance(outputs, torch.Tensor):
        return ["output"]
    return [f"output{i}" for i in range(len(outputs))]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] | None = None,
    opset: int = 17,
) -> Path:
    """Export ``model`` (eval mode, float-equivalent form) to the ONNX file ``path``; returns the path.

    Args:
        model: A zoo model (fake-quant form for BNNs; the original is left untouched, a copy is exported).
        path: The ``.onnx`` file to write.
        input_size: ``(C, H, W)`` of one input; None takes the model's ``pretrained_cfg['input_size']``.
        opset: ONNX opset version.

    The input is named ``input`` and the output ``output`` (``output0``, ``output1``, ... for a model returning
    several tensors, e.g. ``features_only``); dimension 0 of each is the dynamic ``batch``.
    """
    if input_size is None:
        input_size = model.pretrained_cfg["input_size"]
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    wrapped = _InputOnly(export_form(model)).eval()
    param = next(model.parameters())
    # Batch 2: a batch of 1 could be specialised by the tracer. A private generator leaves the global RNG alone.
    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    with torch.no_grad():
        output_names = _output_names(wrapped(example))
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *output_names)}
    with warnings.catch_warnings():
        # Expected notes: the TorchScript exporter's deprecation, its constant folding skipping strided slices
        # (option-A shortcuts), and the tracer reading the zoo's shape checks and pooled sizes as constants.
        warnings.filterwarnings(
            "ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"zoo\.")
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return path
