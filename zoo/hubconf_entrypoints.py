"""torch.hub entrypoints generated from the timm registry, each with a usage docstring."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
from torch import nn

from zoo.registry import load_manifest


def _entrypoint(arch: str) -> Callable[..., nn.Module]:
    tags = sorted(e["tag"] for e in load_manifest().values() if e["architecture"] == arch)

    def entrypoint(pretrained: bool = False, tag: str | None = None, **kwargs: Any) -> nn.Module:
        return timm.create_model(f"{arch}.{tag}" if tag else arch, pretrained=pretrained, **kwargs)

    weights = (
        f"Released checkpoints: {', '.join(f'{arch}.{t}' for t in tags)}; pretrained=True loads {arch}.{tags[0]}"
        + (", tag= picks another." if len(tags) > 1 else ".")
        if tags
        else "No released checkpoint yet: use pretrained=False."
    )
    example = tags[-1] if tags else "fmnist"
    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__doc__ = f"""{arch} from the compressed-CNN zoo.

    {weights}

    Usage:
        model = torch.hub.load("path/to/zoo", "{arch}", source="local", pretrained=True)
        model = torch.hub.load("path/to/zoo", "{arch}", source="local", num_classes=5, in_chans=3)

    Args:
        pretrained: load a released checkpoint (sha256-checked, strict): the default one, or ``tag``'s.
        tag: which released checkpoint of {arch} ("{example}" loads {arch}.{example}).
        **kwargs: constructor arguments passed to timm.create_model (num_classes, in_chans, ...).
    """
    return entrypoint


def make_entrypoints(architectures: list[str]) -> dict[str, Callable[..., nn.Module]]:
    return {arch: _entrypoint(arch) for arch in architectures}
