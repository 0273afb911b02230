"""Structured channel pruning, in separable parts (as Torch-Pruning separates them):

- ``importance``: criteria that score each prunable channel (L1 filter norm, BN scale, mean MSEB gate);
- ``plan``: which channels each prunable layer keeps, respecting the family's coupling rules;
- ``apply``: a plan applied to a trained model gives a smaller dense model with the kept weights;
- ``clustering`` and ``swarm``: ACP's DBSCAN width estimate and particle-swarm search.

The methods' own rules live in ``ucp``, ``acp`` and ``aip``; ``l1`` is the magnitude baseline.
"""

from zoo.prune.apply import apply_plan, pruned_model_args
from zoo.prune.plan import PrunePlan, keep_top, prunable_blocks

__all__ = ["PrunePlan", "apply_plan", "keep_top", "prunable_blocks", "pruned_model_args"]
