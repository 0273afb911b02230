"""How every zoo architecture is built: timm's builder with the zoo's verified weight loading.

timm resolves the pretrained cfg, adapts ``num_classes``/``in_chans`` and wraps ``features_only``; the zoo
decides where the weights come from (local ``models/`` -> HF cache -> Hub), checks their sha256, reads them
as safetensors only and has timm load them strictly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._builder import resolve_pretrained_cfg
from torch import nn

from zoo.errors import ShapeMismatchError
from zoo.hub import ResolvedCheckpoint, load_verified_checkpoint
from zoo.inference import unpack_binary_weights
from zoo.models._config_fit import Described, describe, describe_config, fit_weights
from zoo.models._input_check import install_input_check
from zoo.registry import CONFIG_NAME, MANIFEST_PATH, checkpoint_model_args, with_releases

_REMOTE_SOURCES = ("hf-hub", "local-dir")


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar_cfg(pool_size: tuple[int, int], imagenet_stats: bool = False, **kwargs: Any) -> dict[str, Any]:
    """The pretrained cfg of a 32x32, 10-class CIFAR-family architecture.

    ``imagenet_stats``: normalise with ImageNet's mean/std, as the BNN papers' CIFAR code does.
    """
    return {
        "input_size": (3, 32, 32),
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN if imagenet_stats else CIFAR_MEAN,
        "std": IMAGENET_STD if imagenet_stats else CIFAR_STD,
        "num_classes": 10,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "mit",
        **kwargs,
    }


def imagenet_cfg(**kwargs: Any) -> dict[str, Any]:
    """The pretrained cfg of a 224x224, 1000-class ImageNet architecture."""
    return {
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": 1000,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "mit",
        **kwargs,
    }


def default_cfgs_with_releases(base_cfgs: dict[str, dict[str, Any]]) -> dict:
    """timm default cfgs for a family: untagged defaults plus one tag per released checkpoint."""
    return generate_default_cfgs(with_releases(base_cfgs))


def build_zoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool = False,
    feature_cfg: dict[str, Any] | None = None,
    pretrained_filter_fn: Callable | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``variant`` with timm's builder; with ``pretrained`` load verified weights strictly.

    The tag's released ``model_args`` (e.g. pruned widths) are defaults for the constructor, so
    ``resnet56_ucp.fmnist`` rebuilds the pruned shape whether or not weights are loaded. The model checks its
    inputs (:mod:`zoo.models._input_check`: a clear ``InputError`` for a bad tensor) before every forward.
    """
    pretrained_cfg = resolve_pretrained_cfg(
        variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
    )
    kwargs.pop("cache_dir", None)
    if pretrained_cfg.source not in _REMOTE_SOURCES:
        released_args = checkpoint_model_args(variant, pretrained_cfg.tag)
        for key, value in released_args.items():
            kwargs.setdefault(key, value)
        if released_args:
            kwargs.setdefault("pretrained_model_args", released_args)

    load_cfg = pretrained_cfg
    pretrained_filter_fn = pretrained_filter_fn or unpack_binary_weights
    if pretrained:
        state_dict, resolved = load_verified_checkpoint(pretrained_cfg)
        described = described_models(variant, pretrained_cfg, kwargs.get("pretrained_model_args") or {}, resolved)
        fitted = [fit_weights(d, state_dict, pretrained_filter_fn) for d in described]
        load_cfg = dataclasses.replace(pretrained_cfg, state_dict=fitted[0], source=None)
    feature_cfg = dict(feature_cfg or {})
    try:
        model = build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_cfg=load_cfg,
            feature_cfg=feature_cfg,
            pretrained_strict=True,
            pretrained_filter_fn=pretrained_filter_fn,
            **kwargs,
        )
    except RuntimeError as err:
        if pretrained and "state_dict" in str(err):
            raise ShapeMismatchError(
                f"The weights do not fit '{variant}' built with {kwargs or 'its default arguments'}: {err}\n"
                "Fix: config.json's architecture and model_args must describe the saved weights "
                "(re-export the checkpoint with `python -m training.export`)."
            ) from err
        raise
    model.pretrained_cfg = model.default_cfg = pretrained_cfg.to_dict()
    return install_input_check(model)


def described_models(
    variant: str, pretrained_cfg: Any, model_args: dict[str, Any], resolved: ResolvedCheckpoint | None
) -> list[Described]:
    """Every model the weights must fit: the one the pretrained cfg and its ``model_args`` build (before the
    caller's own arguments) and, for a registry id, the one the config.json stored beside the weights describes."""
    if pretrained_cfg.source in _REMOTE_SOURCES:
        where = f"{CONFIG_NAME} of {resolved.origin}"
    elif resolved is not None:
        where = f"the registry entry of '{variant}.{pretrained_cfg.tag}' ({MANIFEST_PATH.name})"
    else:
        where = f"the pretrained cfg of '{variant}' (weights {pretrained_cfg.file})"
    built = describe(variant, pretrained_cfg.to_dict(), model_args, where)
    if pretrained_cfg.source in _REMOTE_SOURCES or resolved is None:
        return [built]  # a remote source's config.json is the one that was built
    stored = describe_config(resolved.config, f"{CONFIG_NAME} of {resolved.origin}")
    return [built] if stored.same_model(built) else [built, stored]
