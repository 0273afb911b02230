"""UCP (methods.md §5): channel importance = mean MSEB gate; uniform inner width per stage.

A channel of a gated layer is important if its mean gate exceeds (1 ± λ) times the layer's mean gate. Basic-block
ResNets: one inner width per stage; the papers' code does not say how it follows from the per-block counts, so
here it is the mean of the stage's counts (rounded), each block keeping its own top-scoring channels. Bottleneck
ResNets: only the gated middle 3×3 is pruned, each block to its own count; VGG: each conv to its own count.
``unpruned`` lists prunable layers (by index) that keep every channel even though gated, as the reference's VGG
script does with its skip list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from zoo.prune.importance import mean_gates
from zoo.prune.layers import prunable_layers
from zoo.prune.plan import PrunePlan, keep_top, uniform_stage_widths


def important_counts(gates: Sequence[torch.Tensor], threshold_factor: float) -> list[int]:
    """Per block, how many channels have I_i > threshold_factor * mean(I) (threshold_factor = 1 ± λ)."""
    return [int((g > threshold_factor * g.mean()).sum()) for g in gates]


def ucp_plan(
    se_model: nn.Module,
    batches: Iterable[torch.Tensor],
    threshold_factor: float,
    unpruned: Sequence[int] = (),
) -> tuple[PrunePlan, list[torch.Tensor]]:
    """The plan and the mean gates it came from (one per gated layer); ungated and ``unpruned`` layers keep
    every channel."""
    layers = prunable_layers(se_model)
    if any(not 0 <= i < len(layers) for i in unpruned):
        raise ValueError(f"unpruned layer indices must be within 0..{len(layers) - 1}, got {list(unpruned)}")
    gated = [layer for layer in layers if layer.gate is not None]
    gates = mean_gates(se_model, batches)
    counts = important_counts(gates, threshold_factor)
    if all(layer.model_arg == "inner_widths" for layer in gated):  # basic blocks: uniform per stage
        widths = uniform_stage_widths(counts, [layer.name.split(".")[0] for layer in gated])
    else:
        widths = [max(1, c) for c in counts]
    kept, plan = iter(keep_top(gates, widths).keep), []
    for i, layer in enumerate(layers):
        keep = next(kept) if layer.gate is not None else None
        plan.append(torch.arange(layer.width) if keep is None or i in unpruned else keep)
    return PrunePlan(plan), gates
