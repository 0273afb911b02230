"""Training losses, selected by a recipe's ``train.objective``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor]


def cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(model(images), labels, label_smoothing=smoothing)


def ir2net_two_pass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """IR²Net's CIFAR loss: ½ [CE(f(x), y) + CE(f(x ⊙ M), y)], gradients through both passes, mask detached."""
    logits, restricted = model(images, restricted_pair=True)
    return 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=smoothing)
        + F.cross_entropy(restricted, labels, label_smoothing=smoothing)
    )


OBJECTIVES: dict[str, Objective] = {"cross_entropy": cross_entropy, "ir2net": ir2net_two_pass}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}', use one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
