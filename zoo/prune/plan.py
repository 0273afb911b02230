"""Pruning plans: the channels each prunable layer (``zoo.prune.layers``) keeps, in network order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zoo.prune.layers import layer_widths


def inner_widths(model: nn.Module) -> list[int]:
    """:func:`~zoo.prune.layers.layer_widths` under its basic-block name (a basic block's one prunable width)."""
    return layer_widths(model)


@dataclass
class PrunePlan:
    """Kept channel indices (ascending) of every prunable layer, in network order."""

    keep: list[torch.Tensor]

    @property
    def widths(self) -> list[int]:
        return [len(k) for k in self.keep]

    def to_dict(self) -> dict[str, list[list[int]]]:
        return {"keep": [k.tolist() for k in self.keep]}

    @classmethod
    def from_dict(cls, raw: dict[str, list[list[int]]]) -> PrunePlan:
        return cls([torch.tensor(k, dtype=torch.long) for k in raw["keep"]])

    def check_fits(self, widths: Sequence[int]) -> None:
        """Raise unless the plan has one non-empty, in-range, duplicate-free index set per layer."""
        if len(self.keep) != len(widths):
            raise ValueError(f"the plan covers {len(self.keep)} layers, the model has {len(widths)} prunable layers")
        for i, (keep, width) in enumerate(zip(self.keep, widths, strict=True)):
            if len(keep) == 0:
                raise ValueError(f"layer {i}: a plan must keep at least one channel")
            if int(keep.min()) < 0 or int(keep.max()) >= width or len(keep.unique()) != len(keep):
                raise ValueError(f"layer {i}: kept indices must be distinct and within 0..{width - 1}")


def keep_top(scores: Sequence[torch.Tensor], widths: Sequence[int]) -> PrunePlan:
    """Keep the ``widths[i]`` highest-scoring channels of layer i (ties go to the lower index)."""
    keep = []
    for layer_scores, width in zip(scores, widths, strict=True):
        if not 1 <= width <= len(layer_scores):
            raise ValueError(f"width {width} is outside 1..{len(layer_scores)}")
        order = torch.argsort(layer_scores, descending=True, stable=True)
        keep.append(order[:width].sort().values)
    return PrunePlan(keep)


def keep_all(model: nn.Module) -> PrunePlan:
    """The identity plan: every channel kept."""
    return PrunePlan([torch.arange(w) for w in layer_widths(model)])


def scaled_widths(widths: Sequence[int], keep_ratio: float) -> list[int]:
    """Every layer keeps the same fraction of its channels (at least one)."""
    return [max(1, round(w * keep_ratio)) for w in widths]


def uniform_stage_widths(counts: Sequence[float], stages: Sequence[str]) -> list[int]:
    """UCP's basic-block rule: every layer of a stage (``stages[i]`` names layer i's) gets the stage's mean width."""
    if len(counts) != len(stages):
        raise ValueError(f"{len(counts)} counts for {len(stages)} layers")
    mean = {
        stage: max(1, round(sum(c for c, s in zip(counts, stages, strict=True) if s == stage) / stages.count(stage)))
        for stage in set(stages)
    }
    return [mean[stage] for stage in stages]
