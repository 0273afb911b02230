"""AIP (methods.md §3), a reconstruction: only the paper's abstract is public.

What the abstract fixes: the dense network teaches the network being pruned through attention maps (stage
outputs) and output logits; a shallow fully-connected discriminator plays an adversarial game on the two
networks' outputs; channels are pruned iteratively by an importance criterion, with recovery in between.
Everything else (criterion, loss weights, temperature, steps, recovery length) is a recipe setting, with
defaults from the same group's ICP code and from GAL (the discriminator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AIPSettings:
    steps: int = 4  # pruning steps until the target FLOPs
    recover_images: int = 15000  # training images of recovery after each step
    criterion: str = "bn_scale"  # l1 | bn_scale (zoo.prune.importance)
    kd_temperature: float = 20.0  # ICP
    kd_alpha: float = 0.3  # ICP: alpha * T^2 * KL + (1 - alpha) * CE
    attention_weight: float = 1.0  # ICP
    adversarial_weight: float = 1.0  # GAL
    discriminator_lr: float = 0.01
    discriminator_momentum: float = 0.9


class Discriminator(nn.Module):
    """GAL's discriminator: three linear layers num_classes -> 128 -> 256 -> 128, no nonlinearity."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(num_classes, 128), nn.Linear(128, 256), nn.Linear(256, 128))
        for layer in self.layers:
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.layers(logits)


def real_or_fake_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(scores) if real else torch.zeros_like(scores)
    return F.binary_cross_entropy_with_logits(scores, target)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: a(F) = normalize(mean_c F^2), flattened per image (in float32, whatever F's dtype)."""
    return F.normalize(features.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of mean((a(F_S) - a(F_T))^2)."""
    return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in zip(student, teacher, strict=True))  # type: ignore[return-value]


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(p_T^T || p_S^T) + (1 - alpha) * CE(z_S, y)."""
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * kl + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def step_reductions(target_reduction: float, steps: int) -> list[float]:
    """The FLOPs reduction reached after each pruning step: equal increments up to the target."""
    if steps < 1:
        raise ValueError(f"AIP needs at least one pruning step, got {steps}")
    return [target_reduction * (k + 1) / steps for k in range(steps)]
