"""What the zoo's binary network families share: stages → (IR²Net recovery) → head, and the restricted pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models._feature_taps import FeatureTapsMixin
from zoo.models._pooled_head import PooledHeadMixin
from zoo.nn import pool_and_concat, restriction_mask


class BinaryClassifier(FeatureTapsMixin, PooledHeadMixin, nn.Module):
    """Base of the BNN families, with timm's classifier API.

    A family builds ``forward_stages(x)`` — a list of feature maps whose last entry is the final stage (the
    attention source of IR²Net's restriction) — and sets ``method``, ``recovery`` (IR²Net's fusion module or
    None, fed the earlier stages pooled to the final resolution and concatenated with it), ``num_features``,
    ``drop_rate`` and a pooled head (``global_pool``, ``head_norm``, ``fc``). VGG-Small overrides the head.

    timm's intermediate-feature API comes from :class:`FeatureTapsMixin`; ``recovery_stages`` picks, from its taps,
    the list ``forward_stages`` returns. ``get_classifier``/``reset_classifier`` come from :class:`PooledHeadMixin`.
    """

    method: str
    recovery: nn.Module | None

    def fuse(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """The final stage's features, with the earlier stages recovered into them for IR²Net."""
        if self.recovery is None:
            return stages[-1]
        return self.recovery(pool_and_concat(stages[:-1], stages[-1]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.forward_stages(x))

    def final_features(self, taps: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.recovery_stages(taps))

    def recovery_stages(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """What ``forward_stages`` returns, taken from the ``feature_info`` taps (the same tensors by default)."""
        return taps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if x.ndim == 2:  # the head's BN1d acts on pooled features; unpooled (global_pool='') ones pass through
            x = self.head_norm(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, restricted_pair: bool = False):
        """Logits; with ``restricted_pair`` (IR²Net training) also the logits of the restricted second pass.

        The pair goes through ``forward`` so that a data-parallel wrapper sees one forward call.
        """
        if restricted_pair:
            return self.forward_restricted_pair(x)
        return self.forward_head(self.forward_features(x))

    def forward_restricted_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """IR²Net training: logits of x, and of x masked by the final stage's attention (second pass)."""
        if self.method != "ir2net" or not self.training:
            raise RuntimeError("information restriction is part of IR²Net training: call it in train mode only")
        stages = self.forward_stages(x)
        logits = self.forward_head(self.fuse(stages))
        mask = restriction_mask(stages[-1], x.shape[-2:])
        return logits, self.forward_head(self.forward_features(x * mask))
