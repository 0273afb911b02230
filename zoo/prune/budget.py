"""FLOPs budgets: the pruned widths that reach a target FLOPs reduction, measured by the FLOP counter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from zoo.measure import count_macs
from zoo.prune.apply import apply_plan
from zoo.prune.layers import layer_widths
from zoo.prune.plan import PrunePlan, scaled_widths


def flops_at_widths(model: nn.Module, widths: Sequence[int], input_size: tuple[int, int, int]) -> int:
    """FLOPs (MACs) of ``model`` with its prunable layers cut to ``widths`` (which channels does not matter)."""
    plan = PrunePlan([torch.arange(w) for w in widths])
    return count_macs(apply_plan(model, plan), input_size)["flops"]


def widths_for_reduction(
    model: nn.Module, reduction: float, input_size: tuple[int, int, int], tolerance: float = 0.002
) -> list[int]:
    """The widths that keep one uniform fraction of every prunable layer and cut FLOPs by ``reduction``.

    Bisection on the keep ratio; the returned widths cut at least ``reduction`` (within rounding).
    """
    if not 0.0 <= reduction < 1.0:
        raise ValueError(f"a FLOPs reduction must be in [0, 1), got {reduction}")
    widths = layer_widths(model)
    if reduction == 0.0:
        return widths
    dense = count_macs(model, input_size)["flops"]
    low, high = 0.0, 1.0  # keep ratios: low meets the budget, high does not
    best = scaled_widths(widths, low)
    for _ in range(30):
        mid = (low + high) / 2
        candidate = scaled_widths(widths, mid)
        cut = 1.0 - flops_at_widths(model, candidate, input_size) / dense
        if cut >= reduction:
            best, low = candidate, mid
        else:
            high = mid
        if high - low < tolerance:
            break
    return best
