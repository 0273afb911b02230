"""What the zoo's full-precision CNNs share after their features: init, pooled linear head, timm's head API."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from torch import nn


def init_conv_bn_(model: nn.Module) -> None:
    """He (fan-out) init of every conv; BN as the identity (scale 1, shift 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PooledHeadMixin:
    """Global pooling, optional dropout and ``fc`` after ``forward_features``; needs ``num_features``."""

    num_features: int
    drop_rate: float

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
