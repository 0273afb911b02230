"""The registry of released checkpoints.

The list of released checkpoints is a manifest (``zoo/_manifest.json``) generated from the ``models/``
folders and shipped inside the package, so a pip-installed zoo without the repository's ``models/`` still
knows every checkpoint, its hub repo, pinned revision and sha256. ``zoo manifest`` regenerates it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from pathlib import Path
from typing import Any

from timm.models import PretrainedCfg

from zoo.errors import UnknownModelError

MANIFEST_PATH = Path(__file__).with_name("_manifest.json")
PUBLISHED_PATH = Path(__file__).with_name("_published.json")
HF_ORG = "compressed-cnn-zoo"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


@dataclasses.dataclass
class ZooPretrainedCfg(PretrainedCfg):
    """timm's pretrained cfg plus what the zoo needs to fetch and verify a released checkpoint."""

    sha256: str | None = None
    hf_hub_revision: str | None = None
    local_dir: str | None = None
    compression: dict[str, Any] | None = None


def repo_root() -> Path:
    """The checkout this package lives in (its ``models/`` is the embedded local hub)."""
    return Path(__file__).resolve().parent.parent


def models_dir() -> Path:
    """The local hub: ``$ZOO_MODELS_DIR`` if set, else ``<repo>/models``."""
    return Path(os.environ.get("ZOO_MODELS_DIR") or repo_root() / "models")


@functools.cache
def load_manifest() -> dict[str, dict[str, Any]]:
    """Released checkpoints keyed by id (``<architecture>.<tag>``)."""
    if not MANIFEST_PATH.exists():
        return {}
    return json.loads(MANIFEST_PATH.read_text())


def manifest_entry(checkpoint_id: str) -> dict[str, Any]:
    """The manifest entry of a released checkpoint; unknown ids get close matches suggested."""
    manifest = load_manifest()
    if checkpoint_id in manifest:
        return manifest[checkpoint_id]
    arch, _, tag = checkpoint_id.partition(".")
    tags = sorted(e["tag"] for e in manifest.values() if e["architecture"] == arch)
    if tags:
        raise UnknownModelError(
            f"No released checkpoint '{checkpoint_id}': architecture '{arch}' has tags {tags}. "
            f"Use one of {[f'{arch}.{t}' for t in tags]}."
        )
    close = difflib.get_close_matches(checkpoint_id, list(manifest), n=3, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else " Run `zoo list` to see the released checkpoints."
    raise UnknownModelError(f"No released checkpoint '{checkpoint_id}'.{hint}")


def default_hf_hub_id(checkpoint_id: str) -> str:
    return f"{HF_ORG}/{checkpoint_id}"


def pretrained_cfg_for_entry(base_cfg: dict[str, Any], entry: dict[str, Any]) -> ZooPretrainedCfg:
    """The registry cfg of a released checkpoint: the family's defaults overlaid by its config.json."""
    return ZooPretrainedCfg(
        **{**base_cfg, **entry["pretrained_cfg"]},
        hf_hub_id=entry["hf_hub_id"],
        sha256=entry["sha256"],
        hf_hub_revision=entry.get("hf_hub_revision"),
        local_dir=f"models/{entry['id']}",
        compression=entry.get("compression"),
    )


def with_releases(base_cfgs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any] | PretrainedCfg]:
    """Each architecture's weightless default cfg plus one tagged cfg per released checkpoint of it."""
    cfgs: dict[str, dict[str, Any] | PretrainedCfg] = dict(base_cfgs)
    for entry in load_manifest().values():
        base = base_cfgs.get(entry["architecture"])
        if base is not None:
            cfgs[entry["id"]] = pretrained_cfg_for_entry(base, entry)
    return cfgs


def checkpoint_model_args(architecture: str, tag: str | None) -> dict[str, Any]:
    """Constructor arguments that rebuild a released checkpoint's shape (e.g. pruned widths)."""
    entry = load_manifest().get(f"{architecture}.{tag}") if tag else None
    return dict(entry["model_args"]) if entry else {}


def build_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Read every ``<folder>/<id>/config.json`` into manifest entries."""
    published = json.loads(PUBLISHED_PATH.read_text()) if PUBLISHED_PATH.exists() else {}
    manifest = {}
    for config_path in sorted(folder.glob(f"*/{CONFIG_NAME}")):
        config = json.loads(config_path.read_text())
        meta = config["zoo"]
        checkpoint_id = meta["id"]
        if config_path.parent.name != checkpoint_id:
            raise ValueError(f"{config_path}: zoo.id '{checkpoint_id}' does not match its folder name")
        pub = published.get(checkpoint_id, {})
        manifest[checkpoint_id] = {
            "id": checkpoint_id,
            "architecture": config["architecture"],
            "tag": checkpoint_id.partition(".")[2],
            "model_args": config.get("model_args", {}),
            "pretrained_cfg": config["pretrained_cfg"],
            "hf_hub_id": pub.get("repo_id", default_hf_hub_id(checkpoint_id)),
            "hf_hub_revision": pub.get("revision"),
            "sha256": meta["files"][WEIGHTS_NAME]["sha256"],
            "file_size": meta["files"][WEIGHTS_NAME]["size"],
            "compression": meta["compression"],
            "metrics": meta["metrics"],
        }
    return manifest


def write_manifest(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """Regenerate ``zoo/_manifest.json`` from the local hub folder."""
    manifest = build_manifest(folder or models_dir())
    tmp = MANIFEST_PATH.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(MANIFEST_PATH)
    load_manifest.cache_clear()
    return manifest
