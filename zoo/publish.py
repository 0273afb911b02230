"""Publishing a checkpoint folder to a Hugging Face Hub repo (``zoo push``)."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi

from zoo.errors import IntegrityError, WeightsNotFoundError
from zoo.hub import file_sha256, recorded_sha256, validate_local_dir, validate_repo_id
from zoo.registry import CARD_NAME, CONFIG_NAME, PUBLISHED_PATH, WEIGHTS_NAME, models_dir, write_manifest


def checkpoint_folder(id_or_path: str) -> Path:
    """``models/<id>`` for a checkpoint id, else the folder path given."""
    candidate = models_dir() / id_or_path
    return candidate if candidate.is_dir() else validate_local_dir(id_or_path)


def check_publishable(folder: Path) -> None:
    """A complete folder whose weights match the sha256 its config.json records."""
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if not (folder / n).is_file()]
    if missing:
        raise WeightsNotFoundError(f"{folder} is not a complete checkpoint: missing {missing}. Export it again.")
    expected = recorded_sha256(json.loads((folder / CONFIG_NAME).read_text()), str(folder))
    if file_sha256(folder / WEIGHTS_NAME) != expected:
        raise IntegrityError(f"{folder}/{WEIGHTS_NAME} does not match the sha256 in its config.json; re-export it.")


def push_checkpoint(
    id_or_path: str, repo_id: str, token: str | None = None, private: bool = False, record: bool = False
) -> str:
    """Create the repo if needed and upload the folder as one commit; return the commit sha.

    With ``record``, the commit is pinned for the checkpoint in ``zoo/_published.json`` and the manifest.
    """
    validate_repo_id(repo_id)
    folder = checkpoint_folder(id_or_path)
    check_publishable(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=f"Upload {folder.name}")
    if record:
        published = json.loads(PUBLISHED_PATH.read_text()) if PUBLISHED_PATH.exists() else {}
        published[folder.name] = {"repo_id": repo_id, "revision": info.oid}
        PUBLISHED_PATH.write_text(json.dumps(published, indent=2, sort_keys=True) + "\n")
        write_manifest()
    return info.oid
