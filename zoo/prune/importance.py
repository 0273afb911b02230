"""Channel-importance criteria: one score per channel of every prunable layer (``zoo.prune.layers``), higher = keep."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from zoo.prune.layers import PrunableLayer, prunable_layers


def l1_filter_norm(model: nn.Module) -> list[torch.Tensor]:
    """Li et al.'s criterion: the L1 norm of each filter of the layer's conv."""
    return [layer.conv.weight.detach().abs().sum(dim=(1, 2, 3)).cpu() for layer in prunable_layers(model)]


def bn_scale(model: nn.Module) -> list[torch.Tensor]:
    """Network-slimming's criterion: |gamma| of the BN that follows the layer's conv."""
    return [layer.norm.weight.detach().abs().cpu() for layer in prunable_layers(model)]


@torch.no_grad()
def _average_over_batches(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    read: Callable[[PrunableLayer], torch.Tensor],
    layers: list[PrunableLayer] | None = None,
) -> list[torch.Tensor]:
    """Per prunable layer (or per one of ``layers``), the mean over all images of ``read(layer)`` (a (B, ...)
    tensor set by the forward)."""
    layers = prunable_layers(model) if layers is None else layers
    was_training = model.training
    model.eval()
    sums: list[torch.Tensor] | None = None
    seen = 0
    try:
        for images in batches:
            model(images)
            values = [read(layer).sum(dim=0).double() for layer in layers]
            sums = values if sums is None else [s + v for s, v in zip(sums, values, strict=True)]
            seen += len(images)
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("no images were given to score the channels")
    return [(s / seen).float().cpu() for s in sums]


def mean_gates(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """UCP's criterion: the MSEB gate of each channel of every gated layer, averaged over the images."""
    gated = [layer for layer in prunable_layers(model) if layer.gate is not None]
    if not gated:
        raise TypeError("mean_gates needs the SE-augmented parent (MSEB gates: build it with mseb=True)")
    return _average_over_batches(model, batches, lambda layer: layer.gate.last_gates, gated)


def mean_feature_maps(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """ACP's input to clustering: each prunable layer's conv output (before BN), averaged over the images.

    Returns one (C, H*W) matrix per layer: every channel is a point in R^{HW}.
    """
    captured: dict[nn.Module, torch.Tensor] = {}

    def keep_output(conv: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured[conv] = output.detach().flatten(2)

    handles = [layer.conv.register_forward_hook(keep_output) for layer in prunable_layers(model)]
    try:
        return _average_over_batches(model, batches, lambda layer: captured[layer.conv])
    finally:
        for handle in handles:
            handle.remove()


CRITERIA: dict[str, Callable[[nn.Module], list[torch.Tensor]]] = {"l1": l1_filter_norm, "bn_scale": bn_scale}


def data_free_importance(name: str, model: nn.Module) -> list[torch.Tensor]:
    """A weight-only criterion by name (``l1`` or ``bn_scale``)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown importance criterion '{name}' (use one of {sorted(CRITERIA)})")
    return CRITERIA[name](model)
