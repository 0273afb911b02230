"""Training losses, selected by a recipe's ``train.objective``.

Every objective is called as ``objective(model, images, labels, context)``; ``model`` is the (possibly
data-parallel) wrapped model, so everything goes through its ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ObjectiveContext:
    label_smoothing: float = 0.0
    teacher: nn.Module | None = None  # frozen, eval mode; sees the unmasked images


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, ObjectiveContext], torch.Tensor]


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """H(p_T, p_S) = -Σ p_T log p_S, batch mean, T = 1 (ReActNet's distribution loss, no label term)."""
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def _teacher_logits(context: ObjectiveContext, images: torch.Tensor) -> torch.Tensor:
    if context.teacher is None:
        raise ValueError("this objective distils from a teacher: set train.teacher in the recipe")
    with torch.no_grad():
        return context.teacher(images)


def cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext) -> torch.Tensor:
    return F.cross_entropy(model(images), labels, label_smoothing=ctx.label_smoothing)


def ir2net_two_pass(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext
) -> torch.Tensor:
    """IR²Net's CIFAR loss: ½ [CE(f(x), y) + CE(f(x ⊙ M), y)], gradients through both passes, mask detached."""
    logits, restricted = model(images, restricted_pair=True)
    return 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=ctx.label_smoothing)
        + F.cross_entropy(restricted, labels, label_smoothing=ctx.label_smoothing)
    )


def distribution(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext) -> torch.Tensor:
    """SD-BNN's ImageNet loss: distillation from the teacher, H(p_T(x), p_S(x)); labels are not used."""
    return soft_cross_entropy(model(images), _teacher_logits(ctx, images))


def ir2net_distribution(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext
) -> torch.Tensor:
    """IR²Net's ImageNet loss: ½ [H(p_T(x), p_S(x)) + H(p_T(x), p_S(x ⊙ M))], the teacher sees x only."""
    teacher = _teacher_logits(ctx, images)
    logits, restricted = model(images, restricted_pair=True)
    return 0.5 * (soft_cross_entropy(logits, teacher) + soft_cross_entropy(restricted, teacher))


OBJECTIVES: dict[str, Objective] = {
    "cross_entropy": cross_entropy,
    "ir2net": ir2net_two_pass,
    "distribution": distribution,
    "ir2net_distribution": ir2net_distribution,
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}', use one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
