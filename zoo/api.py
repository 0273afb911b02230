"""The zoo's user-facing loading and discovery functions."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from zoo.errors import ConfigError, UnknownModelError
from zoo.hub import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, resolve_source
from zoo.registry import load_manifest, manifest_entry


def list_architectures(binary_only: bool = False) -> list[str]:
    """Every architecture the zoo registers with timm (only the 1-bit ones with ``binary_only``)."""
    from zoo.models import BINARY_FAMILY_MODULES, FAMILY_MODULES

    modules = BINARY_FAMILY_MODULES if binary_only else FAMILY_MODULES
    return sorted(timm.list_models(module=[m.__name__.rsplit(".", 1)[-1] for m in modules]))


def list_checkpoints() -> list[str]:
    """Every released checkpoint id (``<architecture>.<tag>``)."""
    return sorted(load_manifest())


def check_architecture(name: str) -> str:
    """Return ``name`` if the zoo registers it, else raise with the closest names."""
    archs = list_architectures()
    if name not in archs:
        close = difflib.get_close_matches(name, archs, n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else f" Known architectures: {archs}."
        raise UnknownModelError(f"Unknown model '{name}'.{hint}")
    return name


def check_config(config: dict[str, Any], where: str) -> None:
    """Reject a config.json whose fields have the wrong types before anything is built."""
    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise ConfigError(f"{where}: 'architecture' must be a string naming a zoo architecture, got {arch!r}.")
    check_architecture(arch)
    for key in ("model_args", "pretrained_cfg"):
        if not isinstance(config.get(key, {}), dict):
            raise ConfigError(f"{where}: '{key}' must be a JSON object, got {type(config[key]).__name__}.")


def from_pretrained(source: str, **kwargs: Any) -> nn.Module:
    """Load a checkpoint with verified weights, strictly.

    Args:
        source: a registry id (``resnet20.fmnist``; an architecture alone picks its default tag),
            ``hf-hub:<org>/<name>[@revision]`` or ``local-dir:<folder>``.
        **kwargs: passed to ``timm.create_model`` (e.g. ``num_classes`` for a new head, ``in_chans``).
    """
    if source.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        resolved = resolve_source(source)
        check_config(resolved.config, str(resolved.folder))
        return timm.create_model(source, pretrained=True, **kwargs)
    arch, _, tag = source.partition(".")
    check_architecture(arch)
    if tag:
        manifest_entry(source)
    return timm.create_model(source, pretrained=True, **kwargs)
