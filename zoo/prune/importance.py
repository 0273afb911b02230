"""Channel-importance criteria: one score per inner channel of every prunable block, higher = keep."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from zoo.nn.mseb import MSEB
from zoo.prune.plan import prunable_blocks


def l1_filter_norm(model: nn.Module) -> list[torch.Tensor]:
    """Li et al.'s criterion: the L1 norm of each first-conv filter."""
    return [block.conv1.weight.detach().abs().sum(dim=(1, 2, 3)).cpu() for block in prunable_blocks(model)]


def bn_scale(model: nn.Module) -> list[torch.Tensor]:
    """Network-slimming's criterion: |gamma| of the BN that follows the first conv."""
    return [block.bn1.weight.detach().abs().cpu() for block in prunable_blocks(model)]


@torch.no_grad()
def _average_over_batches(
    model: nn.Module, batches: Iterable[torch.Tensor], read: Callable[[nn.Module], torch.Tensor]
) -> list[torch.Tensor]:
    """Per block, the mean over all images of ``read(block)`` (a (B, ...) tensor set by the forward)."""
    blocks = prunable_blocks(model)
    was_training = model.training
    model.eval()
    sums: list[torch.Tensor] | None = None
    seen = 0
    try:
        for images in batches:
            model(images)
            values = [read(block).sum(dim=0).double() for block in blocks]
            sums = values if sums is None else [s + v for s, v in zip(sums, values, strict=True)]
            seen += len(images)
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("no images were given to score the channels")
    return [(s / seen).float().cpu() for s in sums]


def mean_gates(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """UCP's criterion: the MSEB gate of each inner channel, averaged over the images."""
    if not all(isinstance(block.se, MSEB) for block in prunable_blocks(model)):
        raise TypeError("mean_gates needs the SE-augmented parent (every block with an MSEB: mseb=True)")
    return _average_over_batches(model, batches, lambda block: block.se.last_gates)


def mean_feature_maps(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """ACP's input to clustering: each block's first-conv output (before BN), averaged over the images.

    Returns one (C, H*W) matrix per block: every channel is a point in R^{HW}.
    """
    captured: dict[nn.Module, torch.Tensor] = {}

    def keep_output(conv: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured[conv] = output.detach().flatten(2)

    handles = [block.conv1.register_forward_hook(keep_output) for block in prunable_blocks(model)]
    try:
        return _average_over_batches(model, batches, lambda block: captured[block.conv1])
    finally:
        for handle in handles:
            handle.remove()


CRITERIA: dict[str, Callable[[nn.Module], list[torch.Tensor]]] = {"l1": l1_filter_norm, "bn_scale": bn_scale}


def data_free_importance(name: str, model: nn.Module) -> list[torch.Tensor]:
    """A weight-only criterion by name (``l1`` or ``bn_scale``)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown importance criterion '{name}' (use one of {sorted(CRITERIA)})")
    return CRITERIA[name](model)
