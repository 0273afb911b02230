"""Bad input gets a clear error naming the problem and the fix, and leaves nothing partial behind."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
from conftest import released_ids
from safetensors.torch import save_file

import zoo
from zoo.errors import (
    IntegrityError,
    InvalidSourceError,
    ShapeMismatchError,
    UnknownModelError,
    UnsafeFormatError,
    WeightsNotFoundError,
)
from zoo.hub import read_safetensors
from zoo.registry import models_dir


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(autouse=True)
def models_folder_untouched():
    before = _snapshot(models_dir())
    yield
    assert _snapshot(models_dir()) == before, "a failed load changed the local hub"


def _set_recorded_sha(folder: Path, sha: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["zoo"]["files"]["model.safetensors"]["sha256"] = sha
    (folder / "config.json").write_text(json.dumps(config))


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match=r"Unknown model 'resnet21'.*Did you mean.*resnet20"):
        zoo.from_pretrained("resnet21.fmnist")


def test_unknown_tag_lists_available_tags() -> None:
    arch = released_ids()[0].split(".")[0]
    with pytest.raises(UnknownModelError, match=r"has tags \[.*'fmnist'"):
        zoo.from_pretrained(f"{arch}.imagenet")
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):  # timm's own check, before the zoo's
        timm.create_model(f"{arch}.imagenet", pretrained=True)
    with pytest.raises(WeightsNotFoundError, match=r"Released: \["):
        timm.create_model(arch, pretrained=True, pretrained_cfg={"architecture": arch, "tag": "imagenet"})


def test_missing_weights_file(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="has no model.safetensors"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        zoo.from_pretrained(f"local-dir:{tmp_path / 'nope'}")


def test_truncated_weights_fail_the_sha256_check(checkpoint_copy: Path) -> None:
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(IntegrityError, match="sha256 mismatch.*truncated, altered"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")


def test_truncated_weights_with_matching_record_fail_to_parse(checkpoint_copy: Path) -> None:
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _set_recorded_sha(checkpoint_copy, hashlib.sha256(weights.read_bytes()).hexdigest())
    with pytest.raises(IntegrityError, match="not a valid safetensors file"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")


def test_byte_flipped_weights_are_refused(checkpoint_copy: Path) -> None:
    weights = checkpoint_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")


def test_recorded_sha256_mismatch(checkpoint_copy: Path) -> None:
    _set_recorded_sha(checkpoint_copy, "0" * 64)
    with pytest.raises(IntegrityError, match="expected 0000"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")


def test_missing_sha256_record_is_refused(checkpoint_copy: Path) -> None:
    config = json.loads((checkpoint_copy / "config.json").read_text())
    del config["zoo"]
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(zoo.errors.ConfigError, match="records no sha256"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")


def test_config_shapes_that_do_not_fit_the_weights_list_the_keys(checkpoint_copy: Path) -> None:
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["model_args"] = {"stage_widths": [16, 32, 48]}
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ShapeMismatchError, match=r"(?s)layer3\.0\.conv1\.weight.*model_args must describe"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_weights_are_refused_and_never_unpickled(checkpoint_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    payload = pickle.dumps({"conv1.weight": _RunsCodeWhenUnpickled(marker)})
    (checkpoint_copy / "model.safetensors").unlink()
    (checkpoint_copy / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(UnsafeFormatError, match="pickle.*execute arbitrary code"):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")
    bad = tmp_path / "weights.pth"
    bad.write_bytes(payload)
    with pytest.raises(UnsafeFormatError, match="safetensors only"):
        timm.create_model(released_ids()[0], pretrained=True, pretrained_cfg_overlay={"file": str(bad)})
    # Pickle bytes hiding behind the right file name are refused too.
    (checkpoint_copy / "model.safetensors").write_bytes(payload)
    _set_recorded_sha(checkpoint_copy, hashlib.sha256(payload).hexdigest())
    with pytest.raises(UnsafeFormatError):
        zoo.from_pretrained(f"local-dir:{checkpoint_copy}")
    assert not marker.exists()


@pytest.mark.parametrize("header_length", [0x0180, 0x4B50])  # starts with byte 0x80 / with "PK"
def test_safetensors_whose_header_length_looks_like_a_pickle_still_load(header_length: int, tmp_path: Path) -> None:
    """The 8-byte header length is the file's first bytes: 0x..80 or 0x4B50 make an ordinary safetensors file
    open like a pickle or a zip (a pruned VGG-19 had one). Such files load; pickles stay refused (above)."""
    path = tmp_path / "model.safetensors"
    for name_length in range(header_length - 120, header_length):  # one tensor whose name sets the header size
        tensors = {"w" * name_length: torch.arange(3.0)}
        save_file(tensors, str(path))
        if int.from_bytes(path.read_bytes()[:8], "little") == header_length:
            break
    assert path.read_bytes()[:2] in (b"\x80\x01", b"PK")
    assert torch.equal(read_safetensors(path)["w" * name_length], tensors["w" * name_length])


@pytest.mark.parametrize(
    "source",
    ["hf-hub:../resnet20.fmnist", "hf-hub:org/../x", "hf-hub:/etc/passwd", "hf-hub:a/b/c", "hf-hub:org/..x/y"],
)
def test_repo_ids_with_dotdot_or_extra_parts_are_refused(source: str) -> None:
    with pytest.raises(InvalidSourceError, match="Invalid Hub repo id"):
        zoo.from_pretrained(source)


def test_local_paths_with_dotdot_are_refused() -> None:
    with pytest.raises(InvalidSourceError, match=r"contains '\.\.'"):
        zoo.from_pretrained(f"local-dir:models/../models/{released_ids()[0]}")


def test_hub_unreachable_with_nothing_cached_says_what_was_tried(hf_env, no_local_hub: Path) -> None:
    hf_env.hub.stop()
    with pytest.raises(WeightsNotFoundError) as info:
        zoo.from_pretrained(released_ids()[0])
    message = str(info.value)
    for expected in ("Tried:", "local hub", "HF cache", "unreachable", "HF_HUB_OFFLINE=1", "local-dir:"):
        assert expected in message
    assert not any(p.is_file() for p in hf_env.cache_dir.rglob("*")), "no file may be left in the HF cache"


def test_offline_with_nothing_cached_does_not_touch_the_network(hf_env, no_local_hub: Path) -> None:
    hf_env.set_offline(True)
    with pytest.raises(WeightsNotFoundError, match="not tried, HF_HUB_OFFLINE is set"):
        zoo.from_pretrained(released_ids()[0])
    assert hf_env.hub.requests == []
