"""Each paper-schedule recipe runs one real optimisation step on real CIFAR-10 / ImageNet pixels.

The pixels are the 20 + 20 images of the foolbox 3.3.4 wheel (tests/fixtures/foolbox, MIT). Only the data
source, batch size, epochs and the teacher's pretrained weights (not downloadable here) are overridden.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from conftest import REPO_ROOT
from safetensors.torch import load_file

from training.recipe import Recipe
from training.train import train_recipe

PAPER = REPO_ROOT / "training" / "recipes" / "paper"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "foolbox"
CIFAR = sorted([*PAPER.glob("*.cifar10.yaml"), *PAPER.glob("*.cifar100.yaml")])
IMAGENET_STEP1 = sorted(PAPER.glob("*.in1k.step1.yaml"))
IMAGENET_PRUNING = sorted(PAPER.glob("*.in1k.yaml"))


def _fixture(path: Path) -> str:
    """The foolbox images a recipe smoke-tests on (CIFAR-100 recipes take the CIFAR-10 ones: labels 0-9 fit)."""
    return "imagenet" if ".in1k." in path.name else "cifar10"


def _smoke_overrides(dataset: str) -> list[str]:
    return [
        f"data.root={FIXTURES / dataset}",
        "data.limit=8",
        "data.test_limit=4",
        "train.batch_size=8",
        "train.epochs=1",
        "train.eval_batch_size=4",
    ]


def _prune_overrides(path: Path, tmp_path: Path) -> list[str]:
    """Point a pruning recipe at a one-step parent and shrink its search to a few images.

    ``run:runs/<id>`` parents are their own paper recipe, trained for one step; ``torchvision:`` parents load
    with random weights (see ``no_torchvision_downloads``).
    """
    raw = yaml.safe_load(path.read_text())
    if "prune" not in raw:
        return []
    overrides = ["prune.score_images=8"]
    parent = raw["prune"].get("parent") or ""
    if parent.startswith("run:runs/"):
        parent_id = parent.removeprefix("run:runs/")
        parent_dir = tmp_path / parent_id
        if not (parent_dir / "result.json").exists():
            _one_step(PAPER / f"{parent_id}.yaml", parent_dir)
        parent = f"run:{parent_dir}"
        overrides.append(f"prune.parent={parent}")
    if raw["prune"].get("parent_recipe"):  # UCP's SE parent: the paper recipe, one step on the same images
        se_recipe = yaml.safe_load((REPO_ROOT / raw["prune"]["parent_recipe"]).read_text())
        for item in _smoke_overrides(_fixture(path)):
            key, _, value = item.partition("=")
            section, leaf = key.split(".")
            se_recipe[section][leaf] = yaml.safe_load(value)
        (tmp_path / "se_parent.yaml").write_text(yaml.safe_dump(se_recipe))
        overrides.append(f"prune.parent_recipe={tmp_path / 'se_parent.yaml'}")
    if raw["prune"]["method"] == "acp":
        overrides += ["prune.fitness_images=8", "prune.swarm.particles=2", "prune.swarm.cycles=1", "data.holdout=4",
                      "data.limit=12"]  # fmt: skip
    if raw["prune"]["method"] == "aip":
        overrides += ["prune.aip.steps=1", "prune.aip.recover_images=8"]
        if parent.startswith("run:"):  # the dense parent teaches
            overrides.append(f"train.teacher.checkpoint={parent}")
    return overrides


def _one_step(path: Path, run_dir: Path, extra: list[str] | None = None) -> dict:
    dataset = _fixture(path)
    overrides = [
        *_smoke_overrides(dataset),
        *(["train.teacher.pretrained=false"] if ".step" in path.name else []),
        *(extra or []),
    ]
    result = train_recipe(Recipe.load(path, overrides=overrides), run_dir)
    assert math.isfinite(result["history"][0]["train_loss"])
    assert json.loads((run_dir / "result.json").read_text())["metrics"]["num_samples"] == 4
    return result


@pytest.fixture
def no_torchvision_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torchvision:<arch>.<weights>`` parents and teachers load torchvision's architecture with random weights
    (the pretrained files cannot be downloaded here); the rest of the path runs as it does for users."""
    get_model = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, weights=None, **kw: get_model(name, **kw))


@pytest.mark.parametrize("path", CIFAR, ids=lambda p: p.stem)
def test_cifar_paper_recipe_takes_one_step(path: Path, tmp_path: Path) -> None:
    """Pruning recipes run their prune/search stage first (on a one-step parent), then one training step."""
    _one_step(path, tmp_path / "run", _prune_overrides(path, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("path", IMAGENET_PRUNING, ids=lambda p: p.stem)
def test_imagenet_pruning_recipe_takes_one_step(path: Path, tmp_path: Path, no_torchvision_downloads: None) -> None:
    """The ImageNet pruning recipes: their search stage on 224x224 images, then one step of the final training."""
    result = _one_step(path, tmp_path / "run", _prune_overrides(path, tmp_path))
    plan = json.loads((tmp_path / "run" / "prune" / "plan.json").read_text())
    assert plan["pruned_summary"]["flops"] <= plan["parent_summary"]["flops"]
    assert result["recipe"]["model"]["architecture"] == yaml.safe_load(path.read_text())["model"]["architecture"]


@pytest.mark.slow
@pytest.mark.parametrize("step1", IMAGENET_STEP1, ids=lambda p: p.stem.replace(".step1", ""))
def test_imagenet_two_step_recipes_take_one_step_each(step1: Path, tmp_path: Path) -> None:
    _one_step(step1, tmp_path / "step1")
    first = load_file(tmp_path / "step1" / "final.safetensors")
    step2 = step1.with_name(step1.name.replace("step1", "step2"))
    _one_step(step2, tmp_path / "step2", [f"model.init_from={tmp_path / 'step1' / 'final.safetensors'}"])
    second = load_file(tmp_path / "step2" / "final.safetensors")
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # step 2 trained on from step 1


def test_every_paper_recipe_is_smoke_tested() -> None:
    step2 = sorted(PAPER.glob("*.in1k.step2.yaml"))
    tested = len(CIFAR) + len(IMAGENET_STEP1) + len(step2) + len(IMAGENET_PRUNING)
    assert tested == len(list(PAPER.glob("*.yaml")))
    assert [p.name.replace("step2", "step1") for p in step2] == [p.name for p in IMAGENET_STEP1]
