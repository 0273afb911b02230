"""Training losses, selected by a recipe's ``train.objective``.

Every objective is called as ``objective(model, images, labels, context)``; ``model`` is the (possibly
data-parallel) wrapped model, so everything goes through its ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.prune.aip import (
    AIPSettings,
    Discriminator,
    attention_transfer_loss,
    distillation_loss,
    real_or_fake_loss,
)


@dataclass
class ObjectiveContext:
    label_smoothing: float = 0.0
    teacher: nn.Module | None = None  # frozen, eval mode; sees the unmasked images
    autocast_dtype: torch.dtype | None = None  # the recipe's train.mixed_precision (training/recipe.py)

    def forward(self, model: nn.Module, images: torch.Tensor, **kwargs: Any) -> Any:
        """``model(images, **kwargs)`` with float32 outputs: in mixed precision the models run under
        ``torch.autocast`` (bfloat16 where autocast chooses it) while every loss stays in float32."""
        if self.autocast_dtype is None:
            return model(images, **kwargs)
        with torch.autocast(images.device.type, dtype=self.autocast_dtype):
            out = model(images, **kwargs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, ObjectiveContext], torch.Tensor]


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """H(p_T, p_S) = -Σ p_T log p_S, batch mean, T = 1 (ReActNet's distribution loss, no label term)."""
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def _teacher_logits(context: ObjectiveContext, images: torch.Tensor) -> torch.Tensor:
    if context.teacher is None:
        raise ValueError("this objective distils from a teacher: set train.teacher in the recipe")
    with torch.no_grad():
        return context.forward(context.teacher, images)


def cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext) -> torch.Tensor:
    return F.cross_entropy(ctx.forward(model, images), labels, label_smoothing=ctx.label_smoothing)


def ir2net_two_pass(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext
) -> torch.Tensor:
    """IR²Net's CIFAR loss: ½ [CE(f(x), y) + CE(f(x ⊙ M), y)], gradients through both passes, mask detached."""
    logits, restricted = ctx.forward(model, images, restricted_pair=True)
    return 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=ctx.label_smoothing)
        + F.cross_entropy(restricted, labels, label_smoothing=ctx.label_smoothing)
    )


def distribution(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext) -> torch.Tensor:
    """SD-BNN's ImageNet loss: distillation from the teacher, H(p_T(x), p_S(x)); labels are not used."""
    return soft_cross_entropy(ctx.forward(model, images), _teacher_logits(ctx, images))


def ir2net_distribution(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext
) -> torch.Tensor:
    """IR²Net's ImageNet loss: ½ [H(p_T(x), p_S(x)) + H(p_T(x), p_S(x ⊙ M))], the teacher sees x only."""
    teacher = _teacher_logits(ctx, images)
    logits, restricted = ctx.forward(model, images, restricted_pair=True)
    return 0.5 * (soft_cross_entropy(logits, teacher) + soft_cross_entropy(restricted, teacher))


@contextmanager
def stage_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of the model's stages (its ``feature_info`` taps after the stem) during a forward."""
    net = getattr(model, "module", model)  # hooks on the wrapped module still fire through DDP's forward
    outputs: list[torch.Tensor] = []
    names = [info["module"] for info in net.feature_info[1:]]
    handles = [net.get_submodule(n).register_forward_hook(lambda m, i, o: outputs.append(o)) for n in names]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class AdversarialDistillation:
    """AIP's objective (a reconstruction, see zoo/prune/aip.py): KD + attention transfer + adversarial term.

    Each call first updates the discriminator (teacher logits real, student logits fake), then returns the
    student's loss. The discriminator and its optimizer are saved with the run's state (``state_dict``).
    """

    def __init__(
        self, settings: AIPSettings, num_classes: int, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        self.settings = settings
        with torch.random.fork_rng(devices=[]):  # its own seed: the same start whatever ran before in the process
            torch.manual_seed(seed)
            self.discriminator = Discriminator(num_classes).to(device)
        self.optimizer = torch.optim.SGD(
            self.discriminator.parameters(), lr=settings.discriminator_lr, momentum=settings.discriminator_momentum
        )

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: ObjectiveContext
    ) -> torch.Tensor:
        if ctx.teacher is None:
            raise ValueError("the aip objective distils from the dense parent: set train.teacher.checkpoint")
        s = self.settings
        with torch.no_grad(), stage_outputs(ctx.teacher) as teacher_maps:
            teacher_logits = ctx.forward(ctx.teacher, images)
        with stage_outputs(model) as student_maps:
            student_logits = ctx.forward(model, images)

        self.discriminator.requires_grad_(True)
        d_loss = real_or_fake_loss(self.discriminator(teacher_logits), True) + real_or_fake_loss(
            self.discriminator(student_logits.detach()), False
        )
        self.optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizer.step()

        self.discriminator.requires_grad_(False)  # the student's adversarial term must not train D
        fool = real_or_fake_loss(self.discriminator(student_logits), True)
        return (
            distillation_loss(student_logits, teacher_logits, labels, s.kd_temperature, s.kd_alpha)
            + s.attention_weight * attention_transfer_loss(student_maps, teacher_maps)
            + s.adversarial_weight * fool
        )

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


OBJECTIVES: dict[str, Objective] = {
    "cross_entropy": cross_entropy,
    "ir2net": ir2net_two_pass,
    "distribution": distribution,
    "ir2net_distribution": ir2net_distribution,
}


def get_objective(
    name: str,
    num_classes: int = 0,
    aip: AIPSettings | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Objective:
    """The objective called ``name``; ``aip`` (stateful) is built for ``num_classes`` with its settings."""
    if name == "aip":
        return AdversarialDistillation(aip or AIPSettings(), num_classes, device, seed)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}', use one of {sorted([*OBJECTIVES, 'aip'])}")
    return OBJECTIVES[name]
