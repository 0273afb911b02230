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
import yaml
from conftest import REPO_ROOT
from safetensors.torch import load_file

from training.recipe import Recipe
from training.train import train_recipe

PAPER = REPO_ROOT / "training" / "recipes" / "paper"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "foolbox"
CIFAR = sorted(PAPER.glob("*.cifar10.yaml"))
IMAGENET_STEP1 = sorted(PAPER.glob("*.in1k.step1.yaml"))


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
    """Point a pruning recipe at a one-step dense parent and shrink its search to a few images."""
    raw = yaml.safe_load(path.read_text())
    if "prune" not in raw:
        return []
    parent = tmp_path / "parent"
    if not (parent / "result.json").exists():
        _one_step(PAPER / "resnet56.cifar10.yaml", parent)
    overrides = [f"prune.parent=run:{parent}", "prune.score_images=8"]
    if raw["prune"].get("parent_recipe"):  # UCP's SE parent: the paper recipe, one step on the same images
        se_recipe = yaml.safe_load((REPO_ROOT / raw["prune"]["parent_recipe"]).read_text())
        for item in _smoke_overrides("cifar10"):
            key, _, value = item.partition("=")
            section, leaf = key.split(".")
            se_recipe[section][leaf] = yaml.safe_load(value)
        (tmp_path / "se_parent.yaml").write_text(yaml.safe_dump(se_recipe))
        overrides.append(f"prune.parent_recipe={tmp_path / 'se_parent.yaml'}")
    if raw["prune"]["method"] == "acp":
        overrides += ["prune.fitness_images=8", "prune.swarm.particles=2", "prune.swarm.cycles=1", "data.holdout=4",
                      "data.limit=12"]  # fmt: skip
    if raw["prune"]["method"] == "aip":
        overrides += ["prune.aip.steps=1", "prune.aip.recover_images=8", f"train.teacher.checkpoint=run:{parent}"]
    return overrides


def _one_step(path: Path, run_dir: Path, extra: list[str] | None = None) -> dict:
    dataset = "imagenet" if ".in1k." in path.name else "cifar10"
    overrides = [
        *_smoke_overrides(dataset),
        *(["train.teacher.pretrained=false"] if dataset == "imagenet" else []),
        *(extra or []),
    ]
    result = train_recipe(Recipe.load(path, overrides=overrides), run_dir)
    assert math.isfinite(result["history"][0]["train_loss"])
    assert json.loads((run_dir / "result.json").read_text())["metrics"]["num_samples"] == 4
    return result


@pytest.mark.parametrize("path", CIFAR, ids=lambda p: p.stem)
def test_cifar_paper_recipe_takes_one_step(path: Path, tmp_path: Path) -> None:
    """Pruning recipes run their prune/search stage first (on a one-step parent), then one training step."""
    _one_step(path, tmp_path / "run", _prune_overrides(path, tmp_path))


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
    assert len(CIFAR) + len(IMAGENET_STEP1) + len(step2) == len(list(PAPER.glob("*.yaml")))
    assert [p.name.replace("step2", "step1") for p in step2] == [p.name for p in IMAGENET_STEP1]
