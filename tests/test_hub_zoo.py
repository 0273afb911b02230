"""The zoo's Hub path, for real: huggingface_hub against a loopback server that speaks the Hub's protocol."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import released_ids
from safetensors.torch import load_file, save_file

import zoo
from zoo import registry
from zoo.errors import IntegrityError, WeightsNotFoundError
from zoo.hub import file_sha256
from zoo.publish import push_checkpoint
from zoo.registry import models_dir

CKPT = released_ids()[0]
REPO = registry.default_hf_hub_id(CKPT)
SRC = models_dir() / CKPT  # resolved before any fixture points the local hub elsewhere


def _golden_check(model: torch.nn.Module, checkpoint_folder: Path) -> None:
    golden = load_file(checkpoint_folder / "test" / "golden.safetensors")
    cfg = model.pretrained_cfg
    x = (golden["images"].float() / 255 - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(
        1, -1, 1, 1
    )
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x), golden["logits"], rtol=1e-4, atol=1e-4)


def _perturbed_copy(src: Path, dest: Path) -> Path:
    """A second valid release of the same checkpoint with different weights (and their own sha256)."""
    shutil.copytree(src, dest)
    state = load_file(dest / "model.safetensors")
    state["fc.bias"] = state["fc.bias"] + 1.0
    save_file(state, dest / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    config["zoo"]["files"]["model.safetensors"]["sha256"] = file_sha256(dest / "model.safetensors")
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture
def restore_registry():
    clear_cache = registry.load_manifest.cache_clear  # the real function, even while a test replaces it
    yield
    clear_cache()


def test_registry_id_downloads_from_the_hub_then_loads_offline_from_cache(hf_env, no_local_hub) -> None:
    commit = hf_env.hub.add_folder(REPO, SRC)
    _golden_check(zoo.from_pretrained(CKPT), SRC)
    assert ("GET", f"/{REPO}/resolve/main/model.safetensors") in hf_env.hub.requests
    assert hf_env.hub.head(REPO) == commit
    hf_env.hub.stop()
    hf_env.set_offline(True)
    _golden_check(zoo.from_pretrained(CKPT), SRC)


def test_hf_hub_source_with_pinned_revisions(hf_env, tmp_path: Path) -> None:
    first = hf_env.hub.add_folder("org/model", SRC)
    second_folder = _perturbed_copy(SRC, tmp_path / "v2")
    second = hf_env.hub.add_folder("org/model", second_folder)
    assert first != second
    bias_first = zoo.from_pretrained(f"hf-hub:org/model@{first}").fc.bias
    bias_main = zoo.from_pretrained("hf-hub:org/model").fc.bias
    bias_second = zoo.from_pretrained(f"hf-hub:org/model@{second}").fc.bias
    torch.testing.assert_close(bias_main, bias_second)
    torch.testing.assert_close(bias_second, bias_first + 1.0)


def test_registry_revision_pin_is_honoured(hf_env, no_local_hub, tmp_path, monkeypatch, restore_registry) -> None:
    pinned = hf_env.hub.add_folder(REPO, SRC)
    hf_env.hub.add_folder(REPO, _perturbed_copy(SRC, tmp_path / "v2"))  # main moves on
    entry = dict(registry.load_manifest()[CKPT], hf_hub_revision=pinned)
    monkeypatch.setattr(registry, "load_manifest", lambda: {CKPT: entry})
    _golden_check(zoo.from_pretrained(CKPT), SRC)
    assert all(pinned in path for method, path in hf_env.hub.requests if "/resolve/" in path)


def test_unknown_repo_is_reported_as_not_found(hf_env) -> None:
    with pytest.raises(WeightsNotFoundError, match="(?s)RepositoryNotFoundError.*Check the repo id"):
        zoo.from_pretrained("hf-hub:org/missing")


def test_server_errors_are_reported_with_what_was_tried(hf_env, no_local_hub) -> None:
    hf_env.hub.add_folder(REPO, SRC)
    hf_env.hub.faults.fail(500, times=None)
    with pytest.raises(WeightsNotFoundError, match="(?s)HF cache.*Hugging Face Hub.*unreachable"):
        zoo.from_pretrained(CKPT)
    hf_env.hub.faults.clear()
    _golden_check(zoo.from_pretrained(CKPT), SRC)  # a later try succeeds cleanly


def test_altered_file_under_the_same_revision_is_caught_and_evicted(hf_env, no_local_hub) -> None:
    hf_env.hub.add_folder(REPO, SRC)
    good = (SRC / "model.safetensors").read_bytes()
    tampered = bytearray(good)
    tampered[-64] ^= 0x01
    hf_env.hub.faults.swap_content(bytes(tampered), match="model.safetensors", keep_etag=True)
    with pytest.raises(IntegrityError, match="removed from the HF cache"):
        zoo.from_pretrained(CKPT)
    cached = [p for p in hf_env.cache_dir.rglob("*") if p.is_file() and p.stat().st_size == len(good)]
    assert all(p.read_bytes() != bytes(tampered) for p in cached), "the corrupt blob must not stay in the cache"
    hf_env.set_offline(True)
    with pytest.raises(WeightsNotFoundError):  # offline, nothing acceptable is cached
        zoo.from_pretrained(CKPT)
    hf_env.set_offline(False)
    hf_env.hub.faults.clear()
    _golden_check(zoo.from_pretrained(CKPT), SRC)


def test_truncated_download_leaves_nothing_usable(hf_env, no_local_hub) -> None:
    hf_env.hub.add_folder(REPO, SRC)
    hf_env.hub.faults.truncate(times=None, match="model.safetensors")
    with pytest.raises(WeightsNotFoundError):
        zoo.from_pretrained(CKPT)
    assert not [p for p in hf_env.cache_dir.rglob("*.safetensors*") if p.is_file()]


def test_push_publishes_a_folder_that_loads_back(hf_env, tmp_path, monkeypatch, restore_registry) -> None:
    monkeypatch.setattr(registry, "PUBLISHED_PATH", tmp_path / "published.json")
    monkeypatch.setattr(registry, "MANIFEST_PATH", tmp_path / "manifest.json")
    monkeypatch.setattr("zoo.publish.PUBLISHED_PATH", tmp_path / "published.json")
    commit = push_checkpoint(CKPT, "org/pushed", token="hf_test", record=True)
    assert hf_env.hub.files_at("org/pushed", commit)["model.safetensors"] == (SRC / "model.safetensors").read_bytes()
    assert registry.load_manifest()[CKPT]["hf_hub_revision"] == commit
    assert registry.load_manifest()[CKPT]["hf_hub_id"] == "org/pushed"
    _golden_check(zoo.from_pretrained(f"hf-hub:org/pushed@{commit}"), SRC)


def test_push_without_a_token_is_refused(hf_env) -> None:
    with pytest.raises(Exception, match="401"):
        push_checkpoint(CKPT, "org/nope")
    with pytest.raises(Exception, match="org/nope"):
        hf_env.hub.head("org/nope")
