"""Numbers recomputed from a model, never typed in: parameters, FLOPs, BOPs, OPs, file size.

FLOPs follow the papers' convention: full-precision multiply-accumulates (MACs), counted by
``torch.utils.flop_counter`` (which counts 2 FLOPs per MAC, hence the halving). BOPs are the MACs of
binary layers (modules with ``binary = True``); OPs = BOPs / 64 + FLOPs, as in Bi-Real Net.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, int]:
    """Full-precision MACs (``flops``), binary MACs (``bops``) and ``ops`` for one image."""
    # A frozen eval-mode copy: FlopCounterMode's module tracker cannot follow parameters that require grad
    # into submodules (the weight quantizers).
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    binary_names = [name for name, m in frozen.named_modules() if getattr(m, "binary", False)]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        frozen(torch.zeros(1, *input_size))
    per_module = counter.get_flop_counts()
    total = counter.get_total_flops() // 2
    # Only the convolution of a binary layer is binary; its helpers (e.g. SD-BNN's SE branch) stay in FLOPs.
    bops = (
        sum(
            count
            for n in binary_names
            for op, count in per_module.get(f"{type(model).__name__}.{n}", {}).items()
            if "convolution" in str(op)
        )
        // 2
    )
    flops = total - bops
    return {"flops": flops, "bops": bops, "ops": flops + bops // 64}


def model_summary(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Any]:
    return {"params": count_params(model), **count_macs(model, input_size)}
