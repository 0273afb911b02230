"""Writing a checkpoint folder (a complete Hugging Face model repo) atomically.

Everything is written into a temporary sibling folder, then swapped in with renames, so a killed export
never leaves a half-written ``models/<id>``: readers see the old folder or the new one, whole. A kill between
the two renames leaves only ``.<id>.old``; the next write puts it back first (``recover_interrupted_write``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from zoo.hub import file_sha256
from zoo.registry import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def recover_interrupted_write(dest: Path) -> None:
    """Undo what a killed write left: restore ``.<id>.old`` if the swap stopped half-way, drop temp folders."""
    old = dest.with_name(f".{dest.name}.old")
    if not dest.exists() and old.is_dir():
        old.rename(dest)
    for leftover in dest.parent.glob(f".{dest.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def write_checkpoint_folder(
    dest: Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    render_card: Callable[[dict[str, Any]], str],
    extra_files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Write weights, config.json (with the weights' sha256 and size) and the card; return the config."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_write(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a published folder is world-readable
    try:
        save_file(state_dict, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for rel, tensors in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp / rel), metadata={"format": "pt"})
        weights = tmp / WEIGHTS_NAME
        config = json.loads(json.dumps(config))  # a deep copy that is certainly JSON
        sha256 = file_sha256(weights)
        config["zoo"]["files"] = {WEIGHTS_NAME: {"sha256": sha256, "size": weights.stat().st_size}}
        replaced = [r for r in config["zoo"].pop("supersedes", []) if r["sha256"] != sha256]  # same weights: none
        if replaced:
            config["zoo"]["supersedes"] = replaced
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(render_card(config))
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def update_checkpoint_config(
    folder: Path, update: Callable[[dict[str, Any]], None], render_card: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Apply ``update`` to ``folder/config.json`` in place, then re-render the card from it; return the config.

    Each file is swapped in whole (write beside, rename), so a reader never sees a half-written one. The card is a
    function of the config: a kill between the two renames leaves only a stale card, which ``zoo cards`` redoes.
    """
    config_path = folder / CONFIG_NAME
    config = json.loads(config_path.read_text())
    update(config)
    card = render_card(config)  # before anything is written: a config the card cannot render is refused whole
    for path, text in ((config_path, json.dumps(config, indent=2) + "\n"), (folder / CARD_NAME, card)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    return config
