"""The zoo's user-facing loading and discovery functions."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from zoo.errors import ConfigError, UnknownModelError
from zoo.hub import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, resolve_source
from zoo.models._config_fit import build_on_meta, describe_config
from zoo.registry import load_manifest, manifest_entry

#: The largest width, depth, class count or size a config.json may ask for (far above any zoo model's).
MAX_SIZE = 65_536
#: The most parameters a config.json may describe (the zoo's largest models have ~25M).
MAX_PARAMS = 200_000_000


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
    # Sizes are checked before anything is built: a width of 10**9 would make torch try to allocate it.
    sizes = {"num_classes": config.get("num_classes"),
             "pretrained_cfg.num_classes": config.get("pretrained_cfg", {}).get("num_classes")}  # fmt: skip
    for key, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE):
            raise ConfigError(
                f"{where}: '{key}' must be an integer from 0 to {MAX_SIZE}, got {value!r}. Fix config.json "
                "(re-export the checkpoint with `python -m training.export`)."
            )
    for key, value in config.get("model_args", {}).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and abs(item) > MAX_SIZE:
                raise ConfigError(
                    f"{where}: 'model_args.{key}' holds {item!r}, above the zoo's bound of {MAX_SIZE} for any "
                    "width, depth or size (building it would try to allocate huge tensors). Fix config.json's "
                    "model_args to describe the saved weights (re-export with `python -m training.export`)."
                )
    _check_param_count(config, where)


def _check_param_count(config: dict[str, Any], where: str) -> None:
    """Build the model the config describes on the meta device (no memory): refuse absurd parameter counts and
    configs that cannot be built."""
    sizes: list[int] = []  # every parameter registered, counted even when the build fails part-way

    def count_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            sizes.append(param.numel())

    build_error = None
    hook = register_module_parameter_registration_hook(count_parameter)
    try:
        build_on_meta(describe_config(config, f"{where}/config.json"))
    except ConfigError as err:
        build_error = err
    finally:
        hook.remove()
    count = sum(sizes)
    if count > MAX_PARAMS:
        raise ConfigError(
            f"{where}: config.json describes a {config['architecture']} with at least {count:,} parameters (model_args "
            f"{config.get('model_args')}, num_classes {config.get('num_classes')}), above the zoo's bound of "
            f"{MAX_PARAMS:,}. Fix model_args/num_classes to describe the saved weights."
        )
    if build_error is not None:
        raise build_error


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
