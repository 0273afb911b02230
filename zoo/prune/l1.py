"""The magnitude baseline (Li et al., 2017): keep the largest-L1 filters, one uniform ratio per layer."""

from __future__ import annotations

from torch import nn

from zoo.prune.budget import widths_for_reduction
from zoo.prune.importance import l1_filter_norm
from zoo.prune.plan import PrunePlan, keep_top


def l1_plan(model: nn.Module, flops_reduction: float, input_size: tuple[int, int, int]) -> PrunePlan:
    """Cut every prunable layer by the same ratio, reaching ``flops_reduction``; keep top-L1 filters."""
    return keep_top(l1_filter_norm(model), widths_for_reduction(model, flops_reduction, input_size))
