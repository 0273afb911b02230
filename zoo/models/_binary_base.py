"""What the zoo's binary network families share: stages → (IR²Net recovery) → head, and the restricted pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models._features import feature_take_indices
from torch import nn

from zoo.nn import pool_and_concat, restriction_mask


class BinaryClassifier(nn.Module):
    """Base of the BNN families, with timm's classifier API.

    A family builds ``forward_stages(x)`` — a list of feature maps whose last entry is the final stage (the
    attention source of IR²Net's restriction) — and sets ``method``, ``recovery`` (IR²Net's fusion module or
    None, fed the earlier stages pooled to the final resolution and concatenated with it), ``num_features``,
    ``drop_rate`` and a pooled head (``global_pool``, ``head_norm``, ``fc``). VGG-Small overrides the head.

    timm's intermediate-feature API (``forward_intermediates``, ``prune_intermediate_layers``) is shared: its taps
    are the ``feature_info`` entries, reached by running the model's children in registration order (the contract
    timm's ``features_only`` wrapper already relies on), so each family must register its children in execution
    order up to the last tap. ``recovery_stages`` picks, from those taps, the list ``forward_stages`` returns.
    """

    method: str
    recovery: nn.Module | None

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def fuse(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """The final stage's features, with the earlier stages recovered into them for IR²Net."""
        if self.recovery is None:
            return stages[-1]
        return self.recovery(pool_and_concat(stages[:-1], stages[-1]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.forward_stages(x))

    def recovery_stages(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """What ``forward_stages`` returns, taken from the ``feature_info`` taps (the same tensors by default)."""
        return taps

    def _feature_groups(self) -> list[list[str]]:
        """Names of the children run from one ``feature_info`` tap to the next (the first group ends at the stem)."""
        tap_modules = [info["module"] for info in self.feature_info]
        groups: list[list[str]] = []
        current: list[str] = []
        for name, _ in self.named_children():
            current.append(name)
            if name == tap_modules[len(groups)]:
                groups.append(current)
                current = []
                if len(groups) == len(tap_modules):
                    return groups
        raise RuntimeError(f"children of {type(self).__name__} do not reach the feature taps {tap_modules} in order")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate features: the ``feature_info`` taps (stem output, then each stage's output).

        Args:
            x: Input images.
            indices: Last n taps if int, all if None, the listed taps (negative from the end) if a sequence.
            norm: Accepted for timm's API; there is no final norm in the features, so it changes nothing.
            stop_early: Stop after the last requested tap (the returned final map is then that tap).
            output_fmt: 'NCHW' only.
            intermediates_only: Return the taps alone.

        Returns:
            The taps, or (final features, taps) where the final features are what ``forward_features`` returns —
            for IR²Net the fused recovery map, not the last stage's output.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        groups = self._feature_groups()
        take_indices, max_index = feature_take_indices(len(groups), indices)
        if stop_early or intermediates_only:
            groups = groups[: max_index + 1]
        taps, intermediates = [], []
        for i, names in enumerate(groups):
            for name in names:
                x = getattr(self, name)(x)
            taps.append(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(taps) == len(self.feature_info):  # every tap ran: the features forward_features returns
            x = self.fuse(self.recovery_stages(taps))
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the layers after the last tap in ``indices`` (and the head); returns the absolute indices kept.

        Ending before the last stage also drops IR²Net's recovery (it fuses the final stage), and the features
        then end at the last kept tap: ``num_features`` follows it and the head goes, as in timm's ResNet.
        """
        groups = self._feature_groups()
        take_indices, max_index = feature_take_indices(len(groups), indices)
        for names in groups[max_index + 1 :]:
            for name in names:
                setattr(self, name, nn.Sequential())  # empty: passes its input through
        prune_end = max_index < len(groups) - 1
        if prune_end:
            self.recovery = None
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
            if hasattr(self, "head_norm"):
                self.head_norm = nn.Identity()
        return take_indices

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
