"""ACP (methods.md §4): DBSCAN widths per layer seed a particle-swarm search over the widths.

One search dimension per prunable layer, except in bottleneck ResNets, where one width per bottleneck is shared
by its conv1 and conv2 (the reference's ResNet-50 code). Which of the two convs the reference clusters is not
known: both are clustered here and the dimension starts at the larger width. Candidates inherit the parent's
weights by L1 rank (the reference's ``l1_pretrain`` option) before their short fitness training; the search
itself is ``zoo.prune.swarm``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from zoo.prune.apply import apply_plan
from zoo.prune.clustering import dbscan_width
from zoo.prune.importance import l1_filter_norm, mean_feature_maps
from zoo.prune.layers import prunable_layers
from zoo.prune.plan import keep_top


def search_dimensions(model: nn.Module) -> list[list[int]]:
    """The prunable layers (by index) that each search dimension sets: a bottleneck's conv2 joins its conv1."""
    dims: list[list[int]] = []
    for i, layer in enumerate(prunable_layers(model)):
        if layer.model_arg == "mid_widths":
            dims[-1].append(i)
        else:
            dims.append([i])
    return dims


def dimension_bounds(model: nn.Module) -> list[int]:
    """Each dimension's upper bound: the parent's width of its layers."""
    widths = [layer.width for layer in prunable_layers(model)]
    return [min(widths[i] for i in dim) for dim in search_dimensions(model)]


def layer_widths_at(model: nn.Module, position: Sequence[int]) -> list[int]:
    """Every prunable layer's width at a search position (one value per dimension)."""
    dims = search_dimensions(model)
    if len(position) != len(dims):
        raise ValueError(f"{len(position)} values for {len(dims)} search dimensions")
    widths = [0] * sum(len(dim) for dim in dims)
    for dim, value in zip(dims, position, strict=True):
        for i in dim:
            widths[i] = int(value)
    return widths


def cluster_widths(model: nn.Module, batches: Iterable[torch.Tensor], eps: float, min_samples: int = 5) -> list[int]:
    """Each dimension's width = DBSCAN clusters + noise of its layers' mean (pre-BN) feature maps (the larger
    of a bottleneck's two)."""
    per_layer = [dbscan_width(maps, eps, min_samples) for maps in mean_feature_maps(model, batches)]
    return [max(per_layer[i] for i in dim) for dim in search_dimensions(model)]


def inherit_by_l1(parent: nn.Module, position: Sequence[int]) -> nn.Module:
    """A candidate at a search position holding the parent's top-L1 filters of every layer."""
    return apply_plan(parent, keep_top(l1_filter_norm(parent), layer_widths_at(parent, position)))
