"""Structured channel pruning, in separable parts (as Torch-Pruning separates them):

- ``layers``: the prunable layers each family has, and the modules coupled to them (its dependency rules);
- ``importance``: criteria that score each prunable channel (L1 filter norm, BN scale, mean MSEB gate);
- ``plan``: which channels each prunable layer keeps;
- ``apply``: a plan applied to a trained model gives a smaller dense model with the kept weights;
- ``budget``: the uniform widths that reach a FLOPs reduction;
- ``clustering`` and ``swarm``: ACP's DBSCAN width estimate and particle-swarm search.

The methods' own rules live in ``ucp``, ``acp`` and ``aip``; ``l1`` is the magnitude baseline.
"""

from zoo.prune.apply import apply_plan, pruned_model_args
from zoo.prune.layers import PrunableLayer, layer_widths, prunable_blocks, prunable_layers
from zoo.prune.plan import PrunePlan, keep_all, keep_top

__all__ = [
    "PrunableLayer",
    "PrunePlan",
    "apply_plan",
    "keep_all",
    "keep_top",
    "layer_widths",
    "prunable_blocks",
    "prunable_layers",
    "pruned_model_args",
]
