"""Apply a plan: a smaller dense copy of a trained model that holds exactly the kept weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from zoo.nn.mseb import MSEB, SE_REDUCTION
from zoo.prune.plan import PrunePlan, inner_widths, prunable_blocks


def _select(tensor: torch.Tensor, dim: int, keep: torch.Tensor) -> torch.Tensor:
    return tensor.detach().index_select(dim, keep).clone()


def _conv(conv: nn.Conv2d, keep: torch.Tensor, dim: int) -> nn.Conv2d:
    in_chs = len(keep) if dim == 1 else conv.in_channels
    out_chs = len(keep) if dim == 0 else conv.out_channels
    new = nn.Conv2d(in_chs, out_chs, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                    conv.bias is not None)  # fmt: skip
    new.weight = nn.Parameter(_select(conv.weight, dim, keep))
    if conv.bias is not None:
        new.bias = nn.Parameter(conv.bias.detach().clone() if dim == 1 else _select(conv.bias, 0, keep))
    return new


def _batch_norm(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(bn, name) is not None:
                getattr(new, name).copy_(_select(getattr(bn, name), 0, keep))
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _mseb(se: MSEB, keep: torch.Tensor) -> MSEB:
    """The gate network keeps its hidden units; its input and output follow the kept channels."""
    new = copy.deepcopy(se)
    new.fc1 = nn.Linear(len(keep), se.fc1.out_features, bias=se.fc1.bias is not None)
    new.fc2 = nn.Linear(se.fc2.in_features, len(keep), bias=se.fc2.bias is not None)
    with torch.no_grad():
        new.fc1.weight.copy_(_select(se.fc1.weight, 1, keep))
        new.fc2.weight.copy_(_select(se.fc2.weight, 0, keep))
        if se.fc1.bias is not None:
            new.fc1.bias.copy_(se.fc1.bias)
            new.fc2.bias.copy_(_select(se.fc2.bias, 0, keep))
    return new


def apply_plan(model: nn.Module, plan: PrunePlan, drop_mseb: bool = False) -> nn.Module:
    """A pruned copy of ``model`` (which is left untouched): every block keeps ``plan``'s inner channels.

    ``drop_mseb`` removes the MSEB gates (UCP's compact network is plain: the gates only scored channels).
    """
    plan.check_fits(inner_widths(model))
    pruned = copy.deepcopy(model)
    for block, keep in zip(prunable_blocks(pruned), plan.keep, strict=True):
        keep = keep.to(block.conv1.weight.device)
        block.conv1 = _conv(block.conv1, keep, dim=0)
        block.bn1 = _batch_norm(block.bn1, keep)
        block.conv2 = _conv(block.conv2, keep, dim=1)
        if isinstance(block.se, MSEB):
            block.se = nn.Identity() if drop_mseb else _mseb(block.se, keep)
    return pruned.to(next(model.parameters()).device)


def pruned_model_args(model: nn.Module) -> dict[str, Any]:
    """The ``model_args`` (config.json) that rebuild ``model``'s shape through timm."""
    blocks = prunable_blocks(model)
    args: dict[str, Any] = {"inner_widths": inner_widths(model)}
    if any(isinstance(block.se, MSEB) for block in blocks):
        for i, block in enumerate(blocks):
            # mseb=True rebuilds MSEB(width), whose hidden layer follows the new width; sliced gates keep the
            # parent's hidden units, which the model args cannot express.
            width = block.conv1.out_channels
            small = width <= SE_REDUCTION
            rebuilt = (1 if small else width // SE_REDUCTION, small)
            if not isinstance(block.se, MSEB) or (block.se.fc1.out_features, block.se.fc1.bias is not None) != rebuilt:
                raise ValueError(
                    f"block {i}: its MSEB gates cannot be rebuilt from model args at width "
                    f"{block.conv1.out_channels}; prune with apply_plan(..., drop_mseb=True)"
                )
        args["mseb"] = True
    return args
