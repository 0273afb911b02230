"""UCP (methods.md §5): channel importance = mean MSEB gate; uniform inner width per stage.

A channel of block b is important if its mean gate exceeds (1 ± λ) times the block's mean gate. The papers'
code does not say how one width per stage follows from the per-block counts; here the stage width is the
mean of its blocks' counts (rounded), and each block then keeps its own top-scoring channels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from zoo.prune.importance import mean_gates
from zoo.prune.plan import PrunePlan, keep_top, uniform_stage_widths


def important_counts(gates: Sequence[torch.Tensor], threshold_factor: float) -> list[int]:
    """Per block, how many channels have I_i > threshold_factor * mean(I) (threshold_factor = 1 ± λ)."""
    return [int((g > threshold_factor * g.mean()).sum()) for g in gates]


def ucp_plan(
    se_model: nn.Module, batches: Iterable[torch.Tensor], threshold_factor: float, blocks_per_stage: int
) -> tuple[PrunePlan, list[torch.Tensor]]:
    """The plan (uniform width per stage) and the mean gates it came from."""
    gates = mean_gates(se_model, batches)
    widths = uniform_stage_widths(important_counts(gates, threshold_factor), blocks_per_stage)
    return keep_top(gates, widths), gates
