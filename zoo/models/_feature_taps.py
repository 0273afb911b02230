"""timm's intermediate-feature API for the zoo's CNNs, driven by ``feature_info``."""

from __future__ import annotations

import torch
from timm.models._features import feature_take_indices
from torch import nn


class FeatureTapsMixin:
    """``forward_intermediates`` and ``prune_intermediate_layers`` from ``feature_info``.

    The taps are the ``feature_info`` modules, reached by running the model's children in registration order (the
    contract timm's ``features_only`` wrapper relies on too), so a model must register its children in execution
    order up to the last tap. :meth:`final_features` turns the taps into what ``forward_features`` returns.
    """

    def final_features(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """``forward_features``'s output given every tap (the last tap unless a model fuses them)."""
        return taps[-1]

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
            The taps, or (final features, taps) where the final features are what ``forward_features`` returns
            (see :meth:`final_features`).
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
            x = self.final_features(taps)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the layers after the last tap in ``indices`` (and the head); returns the absolute indices kept.

        Ending before the last stage makes the features end at the last kept tap (dropping IR²Net's recovery,
        which fuses the final stage): ``num_features`` follows it and the head goes, as in timm's ResNet.
        """
        groups = self._feature_groups()
        take_indices, max_index = feature_take_indices(len(groups), indices)
        for names in groups[max_index + 1 :]:
            for name in names:
                setattr(self, name, nn.Sequential())  # empty: passes its input through
        prune_end = max_index < len(groups) - 1
        if prune_end:
            if hasattr(self, "recovery"):
                self.recovery = None  # IR²Net's fusion needs the final stage
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
            if hasattr(self, "head_norm"):
                self.head_norm = nn.Identity()
        return take_indices
