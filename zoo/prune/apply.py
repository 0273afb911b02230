"""Apply a plan: a smaller dense copy of a trained model that holds exactly the kept weights.

The copy's modules are sliced in place (as Torch-Pruning's pruning functions do), so all but their pruned channel
dimension stays the parent's: BN eps, momentum and counters, train/eval mode, devices. The model's own records of
its widths (``widths``, ``num_features``, ``feature_info``) are not updated: the model rebuilt from
:func:`pruned_model_args` is the pruned network's canonical form.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from zoo.nn.mseb import MSEB, SE_REDUCTION
from zoo.prune.layers import PrunableLayer, layer_widths, model_arg_widths, prunable_layers
from zoo.prune.plan import PrunePlan


def _slice_tensor(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Keep the ``keep`` entries along ``dim`` of one of ``module``'s parameters or buffers (if it has it)."""
    tensor = getattr(module, name)
    if tensor is None:
        return
    sliced = tensor.detach().index_select(dim, keep).clone()
    setattr(module, name, nn.Parameter(sliced) if isinstance(tensor, nn.Parameter) else sliced)


def _prune_outputs(module: nn.Conv2d | nn.Linear, keep: torch.Tensor) -> None:
    _slice_tensor(module, "weight", 0, keep)
    _slice_tensor(module, "bias", 0, keep)
    if isinstance(module, nn.Conv2d):
        module.out_channels = len(keep)
    else:
        module.out_features = len(keep)


def _prune_inputs(module: nn.Conv2d | nn.Linear, keep: torch.Tensor) -> None:
    _slice_tensor(module, "weight", 1, keep)
    if isinstance(module, nn.Conv2d):
        module.in_channels = len(keep)
    else:
        module.in_features = len(keep)


def _prune_batch_norm(bn: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice_tensor(bn, name, 0, keep)
    bn.num_features = len(keep)


def _prune_gate(se: MSEB, keep: torch.Tensor) -> None:
    """The gate network keeps its hidden units; its input and output follow the kept channels."""
    _prune_inputs(se.fc1, keep)
    _prune_outputs(se.fc2, keep)


def prune_layer(layer: PrunableLayer, keep: torch.Tensor) -> None:
    """Keep only the ``keep`` channels of ``layer``, in place: the conv's filters, BN, gate and consumers' inputs."""
    keep = keep.to(layer.conv.weight.device)
    _prune_outputs(layer.conv, keep)
    _prune_batch_norm(layer.norm, keep)
    if layer.gate is not None:
        _prune_gate(layer.gate, keep)
    for consumer in layer.consumers:
        _prune_inputs(consumer, keep)


def _remove_gates(model: nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, MSEB):
            model.set_submodule(name, nn.Identity())


def apply_plan(model: nn.Module, plan: PrunePlan, drop_mseb: bool = False) -> nn.Module:
    """A pruned copy of ``model`` (which is left untouched): every prunable layer keeps ``plan``'s channels.

    ``drop_mseb`` removes the MSEB gates (UCP's compact network is plain: the gates only scored channels).
    """
    plan.check_fits(layer_widths(model))
    pruned = copy.deepcopy(model)
    if drop_mseb:
        _remove_gates(pruned)
    for layer, keep in zip(prunable_layers(pruned), plan.keep, strict=True):
        prune_layer(layer, keep)
    return pruned


def _gate_rebuilds(layer: PrunableLayer) -> bool:
    """Whether ``mseb=True`` rebuilds the layer's gate: MSEB(width)'s hidden layer follows the width, while a
    sliced gate keeps its parent's hidden units, which the model args cannot express."""
    small = layer.width <= SE_REDUCTION
    rebuilt = (1 if small else layer.width // SE_REDUCTION, small)
    return layer.gate is not None and (layer.gate.fc1.out_features, layer.gate.fc1.bias is not None) == rebuilt


def pruned_model_args(model: nn.Module) -> dict[str, Any]:
    """The ``model_args`` (config.json) that rebuild ``model``'s pruned shape through timm.

    The width lists of its prunable layers (``inner_widths``; ``mid_widths`` for bottlenecks; ``widths`` for VGG),
    and ``mseb`` where the layers are gated. Arguments that pruning leaves as they are (``num_classes``, VGG's
    ``layout``) come from the parent's own model args.
    """
    layers = prunable_layers(model)
    args: dict[str, Any] = model_arg_widths(layers)
    gated = [layer for layer in layers if layer.gate is not None]
    if gated:
        # mseb=True gates every layer of a width list the family gates (all inner widths; a bottleneck's mid ones)
        partly = {layer.model_arg for layer in gated} & {layer.model_arg for layer in layers if layer.gate is None}
        for layer in gated:
            if partly or not _gate_rebuilds(layer):
                raise ValueError(
                    f"{layer.name}: its MSEB gates cannot be rebuilt from model args at width {layer.width}; "
                    "prune with apply_plan(..., drop_mseb=True)"
                )
        args["mseb"] = True
    return args
