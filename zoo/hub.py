"""Finding, verifying and reading checkpoints: the embedded local hub, the HF cache and the HF Hub.

A checkpoint is a folder (a Hugging Face model repo) holding ``config.json``, ``model.safetensors`` and
``README.md``. Sources:

- a registry id ``<architecture>.<tag>``: local ``models/<id>`` -> HF cache -> Hugging Face Hub, at the
  revision pinned in the registry, sha256 from the registry;
- ``hf-hub:<org>/<name>[@revision]``: HF cache -> Hub, sha256 from the repo's config.json;
- ``local-dir:<path>``: a folder, sha256 from its config.json.

Weights are read as safetensors only, after their sha256 matched. A cached file that fails the check is
removed from the HF cache, so a later offline load cannot accept it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from safetensors import SafetensorError
from safetensors.torch import load_file

from zoo.errors import (
    ConfigError,
    IntegrityError,
    InvalidSourceError,
    UnsafeFormatError,
    WeightsNotFoundError,
)
from zoo.registry import CONFIG_NAME, WEIGHTS_NAME, load_manifest, manifest_entry, models_dir

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pkl", ".ckpt")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_OFFLINE_HELP = (
    "To work offline: use a clone of the zoo repository (its models/ folder is a local hub), or load once "
    "online so the HF cache holds the files and then set HF_HUB_OFFLINE=1, or pass 'local-dir:<folder>'."
)


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint found on disk, with the sha256 its weights must have."""

    folder: Path
    config: dict[str, Any]
    weights: Path
    expected_sha256: str
    origin: str

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """Verify the weights' sha256, then read them as safetensors."""
        verify_sha256(self.weights, self.expected_sha256, in_hf_cache=self.origin.startswith("HF"))
        return read_safetensors(self.weights)


def validate_repo_id(repo_id: str) -> str:
    """Accept ``org/name`` made of safe characters; refuse ``..``, absolute paths and extra parts."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts) or ".." in repo_id:
        raise InvalidSourceError(
            f"Invalid Hub repo id '{repo_id}': expected '<org>/<name>' with letters, digits, '-', '_' and "
            "'.' only (no '..', no leading '/', no further '/'). Example: 'hf-hub:compressed-cnn-zoo/resnet20.fmnist'."
        )
    return repo_id


def validate_local_dir(path: str | os.PathLike) -> Path:
    """Accept an existing folder given without ``..`` components."""
    if ".." in Path(path).parts:
        raise InvalidSourceError(
            f"Refusing local path '{path}': it contains '..'. Pass the folder's real path instead."
        )
    folder = Path(path)
    if not folder.is_dir():
        raise WeightsNotFoundError(f"No checkpoint folder at '{folder}': it does not exist or is not a folder.")
    return folder


def split_revision(spec: str) -> tuple[str, str | None]:
    repo_id, _, revision = spec.partition("@")
    return repo_id, (revision or None)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _evict_from_hf_cache(path: Path) -> None:
    """Remove a cached file and the blob it links to, so no later load can use it."""
    blob = path.resolve()
    for p in (path, blob):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def verify_sha256(path: Path, expected: str, in_hf_cache: bool = False) -> None:
    """Raise IntegrityError (and evict a cached copy) unless ``path`` has the expected sha256."""
    actual = file_sha256(path)
    if actual == expected:
        return
    if in_hf_cache:
        _evict_from_hf_cache(path)
    where = (
        "It was removed from the HF cache; loading again downloads a fresh copy."
        if in_hf_cache
        else ("Restore the file (e.g. `git checkout -- <file>`) or re-export the checkpoint.")
    )
    raise IntegrityError(
        f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is truncated, altered or "
        f"from another release. {where}"
    )


def _safetensors_layout(head: bytes, size: int) -> bool:
    """A safetensors file opens with its JSON header's length (8 bytes, little-endian), then the header's '{'."""
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= size - 8


def refuse_pickle(path: Path) -> None:
    """Refuse weight files that would be unpickled (a pickle opcode stream or torch's zip): unpickling can run
    arbitrary code. A safetensors header length may itself start with those bytes (0x80, "PK")."""
    with open(path, "rb") as f:
        head = f.read(9)
    pickled = head[:1] == b"\x80" or head[:2] == b"PK"
    if path.suffix in PICKLE_SUFFIXES or (pickled and not _safetensors_layout(head, path.stat().st_size)):
        raise UnsafeFormatError(
            f"Refusing to load '{path}': it is a pickle-based checkpoint (.pth/.bin/.pt), and unpickling can "
            "execute arbitrary code. The zoo loads safetensors only: convert it where you trust the file with "
            "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')`."
        )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing pickles and reporting corrupt files clearly."""
    refuse_pickle(path)
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise IntegrityError(
            f"'{path}' is not a valid safetensors file ({err}). It is truncated or corrupt: download or "
            "export it again."
        ) from err
    if not state:  # timm would take an empty state dict for "no weights" and fail with a bare FileNotFoundError
        raise IntegrityError(f"'{path}' holds no tensors: it is not a checkpoint. Download or export it again.")
    return state


def recorded_sha256(config: dict[str, Any], where: str) -> str:
    """The weights' sha256 that a zoo config.json records."""
    try:
        return config["zoo"]["files"][WEIGHTS_NAME]["sha256"]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{where}/{CONFIG_NAME} records no sha256 for {WEIGHTS_NAME} (key zoo.files.'{WEIGHTS_NAME}'.sha256), "
            "so the weights cannot be verified. Export checkpoints with `python -m training.export`."
        ) from None


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"Cannot read {path}: {err}. It must be a JSON object written by the zoo.") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(config).__name__}.")
    return config


def refuse_links_leaving(folder: Path) -> None:
    """Refuse checkpoint files that are symlinks (or inside linked folders) resolving outside ``folder``.

    A local checkpoint folder is verified against its own config.json, so a link to some other file on the
    machine would be read (and, with a matching record, accepted) as if it belonged to the checkpoint.
    """
    root = folder.resolve()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        path = folder / name
        if not (path.is_symlink() or path.exists()):
            continue
        target = path.resolve()
        if target != root and root not in target.parents:
            raise InvalidSourceError(
                f"Refusing '{path}': it is a symlink that leads outside the checkpoint folder (to '{target}'). "
                f"Copy the real file into {folder} (e.g. `cp --remove-destination '{target}' '{path}'`)."
            )


def _resolve_folder(
    folder: Path, origin: str, expected_sha256: str | None = None, confine: bool = True
) -> ResolvedCheckpoint:
    """``confine``: refuse files linking outside ``folder`` (off for HF cache snapshots, which link to blobs)."""
    if confine:
        refuse_links_leaving(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(folder / pickles[0])
        raise WeightsNotFoundError(f"{folder} has no {WEIGHTS_NAME}. Export the checkpoint or download it again.")
    config = read_config(folder / CONFIG_NAME)
    sha = expected_sha256 or recorded_sha256(config, str(folder))
    return ResolvedCheckpoint(folder, config, weights, sha, origin)


def resolve_local_dir(path: str | os.PathLike) -> ResolvedCheckpoint:
    """A checkpoint folder on disk, verified against the sha256 in its own config.json."""
    folder = validate_local_dir(path)
    if not (folder / CONFIG_NAME).is_file():
        raise WeightsNotFoundError(f"{folder} has no {CONFIG_NAME}: it is not a zoo checkpoint folder.")
    return _resolve_folder(folder, f"local folder {folder}")


def _hub_download(repo_id: str, revision: str | None, local_only: bool) -> Path:
    """Fetch config.json and the weights of a Hub repo; return the snapshot folder."""
    paths = [
        huggingface_hub.hf_hub_download(repo_id, name, revision=revision, local_files_only=local_only)
        for name in (CONFIG_NAME, WEIGHTS_NAME)
    ]
    return Path(paths[1]).parent


def resolve_from_hub(
    repo_id: str, revision: str | None, expected_sha256: str | None = None, tried: list[str] | None = None
) -> ResolvedCheckpoint:
    """HF cache first, then the Hub (unless offline); every failure is reported with what was tried."""
    validate_repo_id(repo_id)
    tried = list(tried or [])
    at = f"{repo_id}@{revision or 'main'}"
    try:
        return _resolve_folder(
            _hub_download(repo_id, revision, local_only=True), f"HF cache ({at})", expected_sha256, confine=False
        )
    except hf_errors.LocalEntryNotFoundError:
        tried.append(f"HF cache ({hf_constants.HF_HUB_CACHE}): no copy of {at}")
    if hf_constants.HF_HUB_OFFLINE:
        tried.append("Hugging Face Hub: not tried, HF_HUB_OFFLINE is set")
        raise WeightsNotFoundError(f"Could not find {at}. Tried:\n- " + "\n- ".join(tried) + f"\n{_OFFLINE_HELP}")
    try:
        folder = _hub_download(repo_id, revision, local_only=False)
    except hf_errors.LocalEntryNotFoundError as err:  # the Hub could not be reached (it subclasses EntryNotFound)
        tried.append(f"Hugging Face Hub ({hf_constants.ENDPOINT}): unreachable ({err.__cause__ or err})")
        raise WeightsNotFoundError(
            f"Could not fetch {at}. Tried:\n- " + "\n- ".join(tried) + f"\n{_OFFLINE_HELP}"
        ) from err
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError) as err:
        tried.append(f"Hugging Face Hub ({hf_constants.ENDPOINT}): {type(err).__name__}")
        raise WeightsNotFoundError(
            f"Could not find {at}. Tried:\n- " + "\n- ".join(tried) + "\nCheck the repo id and revision."
        ) from err
    except Exception as err:  # transport errors surface as the HTTP client's own types (e.g. a truncated body)
        tried.append(f"Hugging Face Hub ({hf_constants.ENDPOINT}): unreachable or failed ({type(err).__name__}: {err})")
        raise WeightsNotFoundError(
            f"Could not fetch {at}. Tried:\n- " + "\n- ".join(tried) + f"\n{_OFFLINE_HELP}"
        ) from err
    return _resolve_folder(folder, f"HF Hub ({at})", expected_sha256, confine=False)


def resolve_registry(checkpoint_id: str) -> ResolvedCheckpoint:
    """A released checkpoint: local ``models/<id>`` -> HF cache -> Hub, verified against the registry."""
    entry = manifest_entry(checkpoint_id)
    local = models_dir() / checkpoint_id
    if (local / CONFIG_NAME).is_file() and (local / WEIGHTS_NAME).is_file():
        # the registry pins the sha256, so a link (e.g. git-annex) cannot substitute other weights
        return _resolve_folder(local, f"local hub {local}", entry["sha256"], confine=False)
    tried = [f"local hub {local}: not present"]
    return resolve_from_hub(entry["hf_hub_id"], entry.get("hf_hub_revision"), entry["sha256"], tried)


def resolve_source(source: str) -> ResolvedCheckpoint:
    """Resolve ``hf-hub:...``, ``local-dir:...`` or a registry id to a verified-on-read checkpoint."""
    if source.startswith(HF_HUB_PREFIX):
        repo_id, revision = split_revision(source[len(HF_HUB_PREFIX) :])
        return resolve_from_hub(repo_id, revision)
    if source.startswith(LOCAL_DIR_PREFIX):
        return resolve_local_dir(source[len(LOCAL_DIR_PREFIX) :])
    return resolve_registry(source)


def load_verified_checkpoint(pretrained_cfg: Any) -> tuple[dict[str, torch.Tensor], ResolvedCheckpoint | None]:
    """The state dict a timm pretrained cfg points at, after its sha256 was checked, and the checkpoint folder it
    was read from (None for a bare weights file given as ``pretrained_cfg.file``)."""
    resolved = _resolve_pretrained(pretrained_cfg)
    if resolved is None:
        return _read_weights_file(pretrained_cfg), None
    return resolved.load_state_dict(), resolved


def _resolve_pretrained(pretrained_cfg: Any) -> ResolvedCheckpoint | None:
    """The checkpoint folder of a timm pretrained cfg; None when it names a bare weights file."""
    if pretrained_cfg.source == "hf-hub":
        repo_id, revision = split_revision(pretrained_cfg.hf_hub_id)
        return resolve_from_hub(repo_id, revision)
    if pretrained_cfg.source == "local-dir":
        return resolve_local_dir(pretrained_cfg.file)
    if pretrained_cfg.file:
        return None
    if getattr(pretrained_cfg, "sha256", None) is None:
        arch = pretrained_cfg.architecture
        tags = sorted(e["id"] for e in load_manifest().values() if e["architecture"] == arch)
        raise WeightsNotFoundError(
            f"No released weights for '{arch}' with this tag. Released: {tags or 'none'}. "
            "Create it with pretrained=False, or pick a released id from `zoo list`."
        )
    return resolve_registry(f"{pretrained_cfg.architecture}.{pretrained_cfg.tag}")


def _read_weights_file(pretrained_cfg: Any) -> dict[str, torch.Tensor]:
    """``pretrained_cfg.file`` read as safetensors, after its sha256 (if the cfg records one) was checked."""
    path = Path(pretrained_cfg.file)
    if not path.is_file():
        raise WeightsNotFoundError(f"pretrained_cfg file '{path}' does not exist.")
    refuse_pickle(path)
    expected = getattr(pretrained_cfg, "sha256", None)
    if expected:
        verify_sha256(path, expected)
    return read_safetensors(path)
