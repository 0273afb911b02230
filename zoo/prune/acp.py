"""ACP (methods.md §4): DBSCAN widths per layer seed a particle-swarm search over the widths.

Candidates inherit the parent's weights by L1 rank (the reference's ``l1_pretrain`` option) before their
short fitness training; the search itself is ``zoo.prune.swarm``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from zoo.prune.apply import apply_plan
from zoo.prune.clustering import dbscan_width
from zoo.prune.importance import l1_filter_norm, mean_feature_maps
from zoo.prune.plan import keep_top


def cluster_widths(model: nn.Module, batches: Iterable[torch.Tensor], eps: float, min_samples: int = 5) -> list[int]:
    """Each prunable layer's width = DBSCAN clusters + noise of its mean (pre-BN) feature maps."""
    return [dbscan_width(maps, eps, min_samples) for maps in mean_feature_maps(model, batches)]


def inherit_by_l1(parent: nn.Module, widths: Sequence[int]) -> nn.Module:
    """A candidate at ``widths`` holding the parent's top-L1 filters of every layer."""
    return apply_plan(parent, keep_top(l1_filter_norm(parent), widths))
