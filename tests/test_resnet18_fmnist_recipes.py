"""The ImageNet-style ResNet-18s on Fashion-MNIST padded to 32x32 (issue 14, item 5): the dataset, the recipes (float
teacher, two-step BNNs) and ``training.regenerate`` training what a release needs before it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT
from safetensors.torch import load_file
from test_training import tiny_recipe

from training.recipe import Recipe
from training.train import train_recipe
from zoo.data import dataset_spec, load_dataset, to_tensors

RECIPES = REPO_ROOT / "training" / "recipes"


def test_fashion_mnist_32_is_fashion_mnist_zero_padded_with_its_own_statistics():
    spec = dataset_spec("fmnist32")
    assert spec.name == "fashion_mnist_32" and spec.input_size == (1, 32, 32)
    padded, labels = to_tensors(load_dataset("fmnist32", "test"), spec, limit=300)
    plain, plain_labels = to_tensors(load_dataset("fashion_mnist", "test"), dataset_spec("fashion_mnist"), limit=300)
    assert padded.shape == (300, 1, 32, 32) and padded.dtype == torch.uint8
    assert torch.equal(padded[:, :, 2:30, 2:30], plain) and torch.equal(labels, plain_labels)
    border = padded.clone()
    border[:, :, 2:30, 2:30] = 0
    assert not border.any()
    train, _ = to_tensors(load_dataset("fashion_mnist_32", "train"), spec)
    pixels = train.double() / 255
    assert pixels.mean().item() == pytest.approx(spec.mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(spec.std[0], abs=1e-4)


def _one_step(path: Path, run_dir: Path, extra: list[str]) -> dict:
    overrides = ["data.limit=12", "data.holdout=4", "data.test_limit=4", "train.batch_size=4", "train.epochs=1",
                 "train.eval_batch_size=4", *extra]  # fmt: skip
    result = train_recipe(Recipe.load(path, overrides=overrides), run_dir)
    assert math.isfinite(result["history"][0]["train_loss"])
    return result


@pytest.mark.parametrize("method", ["bireal", "ir2net"])
def test_teacher_step1_and_step2_recipes_take_one_step_each(method: str, tmp_path: Path) -> None:
    """The float teacher, then step 1 (real weights) distilled from it, then step 2 started from step 1."""
    _one_step(RECIPES / "resnet18_dense.fmnist.yaml", tmp_path / "teacher", [])
    teacher = f"train.teacher.checkpoint=run:{tmp_path / 'teacher'}"
    step1 = _one_step(RECIPES / "parents" / f"resnet18_{method}.fmnist.step1.yaml", tmp_path / "step1", [teacher])
    assert step1["recipe"]["model"]["args"] == {"binarize_weights": False}
    init = f"model.init_from={tmp_path / 'step1' / 'final.safetensors'}"
    _one_step(RECIPES / f"resnet18_{method}.fmnist.yaml", tmp_path / "step2", [teacher, init])
    first, second = (
        load_file(tmp_path / "step1" / "final.safetensors"),
        load_file(tmp_path / "step2" / "final.safetensors"),
    )
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)


@pytest.fixture
def recorded_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, Path]]:
    """``training.regenerate`` in ``tmp_path`` with recipes of its own; training only records what it was asked to
    train (id, seed, run folder) and leaves what a finished run has (final.safetensors, then result.json)."""
    from training import regenerate

    monkeypatch.chdir(tmp_path)
    recipes = tmp_path / "recipes"
    (recipes / "parents").mkdir(parents=True)
    monkeypatch.setattr(regenerate, "RECIPES_DIR", recipes)
    monkeypatch.setattr(regenerate, "export_run", lambda run_dir, seed_runs=None: None)
    monkeypatch.setattr(regenerate, "released_run", lambda run_dirs: run_dirs[0])
    trained: list[tuple[str, int, Path]] = []

    def fake_train(recipe: Recipe, run_dir: Path) -> dict:
        trained.append((recipe.id, recipe.train.seed, run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "final.safetensors").write_bytes(b"")
        (run_dir / "result.json").write_text(json.dumps({"recipe": recipe.to_dict()}))  # as the trainer records it
        return {}

    monkeypatch.setattr(regenerate, "train_recipe", fake_train)
    return trained


def _write(path: Path, checkpoint_id: str, **sections) -> None:
    raw = tiny_recipe(epochs=1)
    raw["id"] = checkpoint_id
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path.write_text(yaml.safe_dump(raw))


def test_regenerate_first_trains_the_runs_a_release_starts_from_and_distils_from(recorded_training, tmp_path):
    from training import regenerate

    recipes = regenerate.RECIPES_DIR
    _write(recipes / "teacher.tiny.yaml", "teacher.tiny", train={"seed": 3})
    teacher = {"teacher": {"checkpoint": "run:runs/teacher.tiny"}, "objective": "distribution"}
    _write(recipes / "parents" / "student.tiny.step1.yaml", "student.tiny.step1", train=teacher)
    _write(recipes / "student.tiny.yaml", "student.tiny", train={**teacher, "seeds": [0, 1]},
           model={"init_from": "runs/student.tiny.step1/final.safetensors"})  # fmt: skip
    regenerate.main(["student.tiny"])
    assert recorded_training == [
        ("teacher.tiny", 3, Path("runs/teacher.tiny")),
        ("student.tiny.step1", 0, Path("runs/student.tiny.step1")),
        ("student.tiny", 0, Path("runs/student.tiny-s0")),
        ("student.tiny", 1, Path("runs/student.tiny-s1")),
    ]
    recorded_training.clear()
    regenerate.main(["student.tiny"])  # everything finished: nothing is trained again
    assert recorded_training == []


def test_regenerate_trains_the_first_seed_of_every_release_before_any_second_seed(recorded_training):
    from training import regenerate

    _write(regenerate.RECIPES_DIR / "a.tiny.yaml", "a.tiny", train={"seeds": [0, 1, 2]})
    _write(regenerate.RECIPES_DIR / "b.tiny.yaml", "b.tiny", train={"seeds": [5, 6]})
    _write(regenerate.RECIPES_DIR / "c.tiny.yaml", "c.tiny")
    regenerate.main(["a.tiny", "b.tiny", "c.tiny"])
    assert [(i, seed) for i, seed, _ in recorded_training] == [
        ("a.tiny", 0), ("b.tiny", 5), ("c.tiny", 0), ("a.tiny", 1), ("b.tiny", 6), ("a.tiny", 2)
    ]  # fmt: skip


def test_regenerate_train_only_trains_every_seed_and_exports_nothing(recorded_training, monkeypatch):
    from training import regenerate

    exported: list[Path] = []
    monkeypatch.setattr(regenerate, "export_run", lambda run_dir, seed_runs=None: exported.append(run_dir))
    _write(regenerate.RECIPES_DIR / "a.tiny.yaml", "a.tiny", train={"seeds": [0, 1]})
    regenerate.main(["a.tiny", "--train-only"])
    assert [(i, seed) for i, seed, _ in recorded_training] == [("a.tiny", 0), ("a.tiny", 1)]
    assert exported == []
    regenerate.main(["a.tiny"])  # the same runs, now exported without training again
    assert len(recorded_training) == 2 and exported == [Path("runs/a.tiny-s0")]


def test_a_seed_suffixed_run_trains_its_recipe_with_that_seed(recorded_training):
    from training import regenerate

    _write(regenerate.RECIPES_DIR / "parent.tiny.yaml", "parent.tiny", train={"seeds": [0, 1, 2]})
    _write(regenerate.RECIPES_DIR / "child.tiny.yaml", "child.tiny",
           model={"init_from": "runs/parent.tiny-s2/final.safetensors"})  # fmt: skip
    regenerate.main(["child.tiny"])
    assert recorded_training[0] == ("parent.tiny", 2, Path("runs/parent.tiny-s2"))


def test_a_needed_run_without_a_recipe_names_the_fix(recorded_training):
    from training import regenerate

    _write(regenerate.RECIPES_DIR / "child.tiny.yaml", "child.tiny",
           model={"init_from": "runs/nowhere.tiny/final.safetensors"})  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"runs/nowhere.tiny is needed .*/parents/nowhere.tiny.yaml"):
        regenerate.main(["child.tiny"])
    assert recorded_training == []


def test_a_pruning_recipe_needs_the_run_it_prunes() -> None:
    from training.regenerate import required_runs

    raw = tiny_recipe(epochs=1)
    raw["prune"] = {"method": "l1", "parent": "run:runs/parent.tiny-s0", "init": "inherit", "flops_reduction": 0.5}
    raw["train"]["teacher"] = {"checkpoint": "run:runs/parent.tiny-s0"}
    assert required_runs(Recipe.from_dict(raw)) == [Path("runs/parent.tiny-s0")]


def test_every_run_a_release_recipe_needs_has_a_recipe_that_trains_it() -> None:
    from training.regenerate import recipe_for_run, release_recipes, required_runs

    needed = {run for path in release_recipes().values() for run in required_runs(Recipe.load(path))}
    assert Path("runs/resnet56.fmnist-s0") in needed and Path("runs/resnet18_dense.fmnist") in needed
    for run in needed:
        recipe = recipe_for_run(run)
        assert recipe is not None, run
        assert run.name in (recipe.id, f"{recipe.id}-s{recipe.train.seed}")
