"""The binary unit ``act(bn(conv(x)) + residual)`` (or ``act(bn(conv(x)))``) that the BNN blocks are built from.

Written once so that a model's inference form can run the unit in one kernel pass: after
:func:`zoo.inference.to_inference` folds ``bn`` into a packed conv (``bn`` is then an ``nn.Identity``), the packed
conv's ``forward_add_act`` adds the residual and applies ``act`` in its epilogue. Training and the fake-quant model
take the plain path, op for op as written above.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_add_act(
    conv: nn.Module, bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, act: nn.Module
) -> torch.Tensor:
    """``act(bn(conv(x)) + residual)`` (no add for ``residual=None``), fused into ``conv``'s kernel where ``conv``
    offers it (see the module)."""
    fused = getattr(conv, "forward_add_act", None)
    if fused is not None and type(bn) is nn.Identity and not (bn._forward_hooks or bn._forward_pre_hooks):
        out = fused(x, residual, act)
        if out is not None:
            return out
    out = bn(conv(x))
    return act(out if residual is None else out + residual)
