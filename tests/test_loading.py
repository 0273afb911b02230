"""Released checkpoints load in the three ways, strictly, verified, and reproduce their golden logits."""

from __future__ import annotations

import importlib.util
import json

import pytest
import timm
import torch
from conftest import REPO_ROOT, released_ids
from safetensors.torch import load_file

import zoo
from zoo.data.augment import normalize
from zoo.measure import model_summary
from zoo.registry import build_manifest, load_manifest, models_dir

IDS = released_ids()


def _golden(checkpoint_id: str) -> dict[str, torch.Tensor]:
    return load_file(models_dir() / checkpoint_id / "test" / "golden.safetensors")


def _logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    cfg = model.pretrained_cfg
    with torch.inference_mode():
        return model.eval()(normalize(images, cfg["mean"], cfg["std"]))


def test_manifest_matches_models_folder() -> None:
    assert build_manifest(models_dir()) == load_manifest(), "run `zoo manifest` and commit zoo/_manifest.json"


def test_timm_lists_exactly_the_released_checkpoints() -> None:
    zoo_archs = set(zoo.list_architectures())
    listed = {m for m in timm.list_models(pretrained=True) if m.split(".")[0] in zoo_archs}
    assert listed == set(IDS) | {i.split(".")[0] for i in IDS}
    without_weights = zoo_archs - {i.split(".")[0] for i in IDS}
    assert not without_weights & set(timm.list_models(pretrained=True))


@pytest.mark.parametrize("checkpoint_id", IDS)
def test_timm_create_model_pretrained_reproduces_golden_logits(checkpoint_id: str) -> None:
    model = timm.create_model(checkpoint_id, pretrained=True)
    golden = _golden(checkpoint_id)
    torch.testing.assert_close(_logits(model, golden["images"]), golden["logits"], rtol=1e-4, atol=1e-4)
    assert model.pretrained_cfg["sha256"] == load_manifest()[checkpoint_id]["sha256"]


@pytest.mark.parametrize("checkpoint_id", IDS)
def test_from_pretrained_registry_and_local_dir_agree(checkpoint_id: str) -> None:
    golden = _golden(checkpoint_id)
    for source in (checkpoint_id, f"local-dir:{models_dir() / checkpoint_id}"):
        torch.testing.assert_close(_logits(zoo.from_pretrained(source), golden["images"]), golden["logits"])


@pytest.mark.parametrize("checkpoint_id", IDS)
def test_recorded_metadata_is_recomputed(checkpoint_id: str) -> None:
    entry = load_manifest()[checkpoint_id]
    model = zoo.from_pretrained(checkpoint_id)
    summary = model_summary(model, tuple(entry["pretrained_cfg"]["input_size"]))
    assert {k: entry["compression"][k] for k in summary} == summary
    weights = models_dir() / checkpoint_id / "model.safetensors"
    assert weights.stat().st_size == entry["file_size"]
    card = (models_dir() / checkpoint_id / "README.md").read_text()
    assert f"{entry['metrics']['top1']:.2f}" in card and entry["sha256"] in card


def test_new_head_and_input_channels_adapt_pretrained_weights() -> None:
    model = timm.create_model(IDS[0], pretrained=True, num_classes=5, in_chans=3)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 5)
    base = timm.create_model(IDS[0], pretrained=True)
    torch.testing.assert_close(model.layer3[0].conv1.weight, base.layer3[0].conv1.weight)


@pytest.mark.parametrize("checkpoint_id", IDS)
def test_torch_hub_load_from_local_clone(checkpoint_id: str) -> None:
    arch, tag = checkpoint_id.split(".")
    model = torch.hub.load(str(REPO_ROOT), arch, source="local", pretrained=True, tag=tag, trust_repo=True)
    golden = _golden(checkpoint_id)
    torch.testing.assert_close(_logits(model, golden["images"]), golden["logits"])
    fresh = torch.hub.load(str(REPO_ROOT), arch, source="local", num_classes=3, trust_repo=True)
    assert fresh.get_classifier().out_features == 3


def test_hubconf_lists_one_documented_entrypoint_per_architecture() -> None:
    # torch.hub.list/help take only GitHub refs; this is the same lookup they do, on the local hubconf.py.
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entrypoints = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert entrypoints == zoo.list_architectures()
    assert "dependencies" in vars(hubconf) and "torch" in hubconf.dependencies
    for name in entrypoints:
        doc = getattr(hubconf, name).__doc__
        assert "torch.hub.load" in doc and "pretrained" in doc


def test_config_json_is_readable_by_plain_timm() -> None:
    config = json.loads((models_dir() / IDS[0] / "config.json").read_text())
    timm.models.PretrainedCfg(**config["pretrained_cfg"])  # timm rejects unknown keys here
    model = timm.create_model(f"local-dir:{models_dir() / IDS[0]}", pretrained=True)
    golden = _golden(IDS[0])
    torch.testing.assert_close(_logits(model, golden["images"]), golden["logits"])
