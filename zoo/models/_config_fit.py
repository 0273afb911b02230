"""A checkpoint's config describes its weights; it never re-shapes them.

timm builds a checkpoint's model from its config (``model_args``, ``num_classes``, ``input_size``) and, where the
class count differs from the pretrained cfg's, drops the stored classifier and initialises a new one without a word.
A mistaken or tampered config.json would thus load a silently different model. So before the real build the zoo
builds the model the config describes on the meta device (no memory, no initialisation) and checks its tensors
against the stored ones. A new head or input stem comes only from the caller's own ``num_classes=`` / ``in_chans=``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.models import model_entrypoint
from timm.models._builder import _update_default_model_kwargs, resolve_pretrained_cfg
from timm.models._hub import _parse_model_cfg
from torch import nn

from zoo.errors import ConfigError, ShapeMismatchError, ZooError
from zoo.inference import PACKED_SUFFIX

_MAX_LISTED = 12
_FIX = (
    "Fix: config.json's architecture and model_args must describe the saved weights (re-export the checkpoint with "
    "`python -m training.export`). For another number of classes or input channels keep config.json as exported "
    "and ask for them in the call, e.g. zoo.from_pretrained(source, num_classes=5) or "
    "timm.create_model(name, pretrained=True, num_classes=5, in_chans=3): that re-heads / adapts the stem."
)


@dataclass(frozen=True)
class Described:
    """The model a checkpoint's config describes: its architecture, every constructor argument it fixes, and the
    class count its pretrained cfg claims for the stored classifier (timm drops that classifier when the model's
    differs)."""

    architecture: str
    kwargs: dict[str, Any]
    pretrained_num_classes: Any
    where: str

    def same_model(self, other: Described) -> bool:
        mine = (self.architecture, self.kwargs, self.pretrained_num_classes)
        return mine == (other.architecture, other.kwargs, other.pretrained_num_classes)


def describe(architecture: str, pretrained_cfg: dict[str, Any], model_args: dict[str, Any], where: str) -> Described:
    """The model ``model_args`` plus the pretrained cfg's class count, input channels and pooling build, filled in
    as timm's builder fills them."""
    kwargs = dict(model_args)
    try:
        _update_default_model_kwargs(dict(pretrained_cfg), kwargs, None)
    except (AssertionError, TypeError, KeyError, IndexError) as err:
        raise ConfigError(
            f"{where}: pretrained_cfg.input_size must be [channels, height, width] ({err!r}). {_FIX}"
        ) from err
    return Described(architecture, kwargs, pretrained_cfg.get("num_classes"), where)


def describe_config(config: dict[str, Any], where: str) -> Described:
    """The model a config.json describes, read as timm reads a ``local-dir:`` / ``hf-hub:`` config."""
    try:
        pretrained_cfg, architecture, model_args = _parse_model_cfg(copy.deepcopy(config), {})
        resolved = resolve_pretrained_cfg(architecture, pretrained_cfg).to_dict()
    except Exception as err:  # noqa: BLE001 - any malformed field; the message names it
        raise ConfigError(f"{where} cannot be read as a model config ({type(err).__name__}: {err}). {_FIX}") from err
    if not isinstance(architecture, str) or not isinstance(model_args, dict):
        raise ConfigError(f"{where}: 'architecture' must be a string and 'model_args' an object. {_FIX}")
    return describe(architecture, resolved, model_args, where)


def build_on_meta(described: Described) -> nn.Module:
    """Build ``described`` on the meta device; a config that cannot be built is a ConfigError.

    The entrypoint is called as timm's factory calls it with a config's ``model_args``: with None values kept.
    """
    try:
        with torch.device("meta"):
            return model_entrypoint(described.architecture)(pretrained=False, **described.kwargs)
    except ZooError:
        raise
    except Exception as err:  # noqa: BLE001 - constructors reject bad arguments with any type
        raise ConfigError(
            f"{described.where} describes a '{described.architecture}' that cannot be built with "
            f"{described.kwargs}: {type(err).__name__}: {err}. {_FIX}"
        ) from err


def tensor_mismatches(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Every tensor whose name or shape differs between ``model`` and the stored ``state_dict``.

    A bit-packed binary weight (``<conv>.weight_packed``) stands for ``<conv>.weight``; its shape is checked when it
    is unpacked to the model's shape (:func:`zoo.inference.unpack_binary_weights`).
    """
    implied = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    stored = {_model_key(name): (name, tuple(t.shape)) for name, t in state_dict.items()}
    found = []
    for key, shape in implied.items():
        if key not in stored:
            found.append(f"{key}: config implies {shape}, missing from the weights")
        elif not stored[key][0].endswith(PACKED_SUFFIX) and stored[key][1] != shape:
            found.append(f"{key}: config implies {shape}, stored {stored[key][1]}")
    found += [
        f"{name}: stored {shape}, unexpected (not in the model the config describes)"
        for key, (name, shape) in stored.items()
        if key not in implied
    ]
    return found


def _claimed_class_count_mismatch(described: Described, model: nn.Module) -> list[str]:
    """The pretrained cfg's class count where it differs from the model's (whose classifier fits the weights)."""
    if described.pretrained_num_classes == model.num_classes:
        return []
    return [
        f"pretrained_cfg.num_classes (or the top-level num_classes): {described.pretrained_num_classes!r}, but the "
        f"stored classifier and model_args give {model.num_classes} classes (timm would drop the stored classifier)"
    ]


def _model_key(stored_name: str) -> str:
    if stored_name.endswith(PACKED_SUFFIX):
        return stored_name[: -len(PACKED_SUFFIX)] + ".weight"
    return stored_name


def fit_weights(
    described: Described, state_dict: dict[str, torch.Tensor], filter_fn: Callable
) -> dict[str, torch.Tensor]:
    """``state_dict`` in the form ``filter_fn`` gives it (binary weights unpacked) for the model ``described``;
    a ShapeMismatchError listing every tensor that does not fit, with the fix, when the config and weights disagree.
    """
    model = build_on_meta(described)
    found = tensor_mismatches(model, state_dict) or _claimed_class_count_mismatch(described, model)
    if found:
        listed = "\n".join(f"  - {line}" for line in found[:_MAX_LISTED])
        more = f"\n  - ... and {len(found) - _MAX_LISTED} more" if len(found) > _MAX_LISTED else ""
        raise ShapeMismatchError(
            f"{described.where} describes a '{described.architecture}' built with {described.kwargs}, which does not "
            f"match the stored weights ({len(found)} differences):\n{listed}{more}\n{_FIX}"
        )
    return filter_fn(state_dict, model)
