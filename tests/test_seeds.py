"""Releases of several seeds: which seed is released, the spread the card and `zoo list` show, what is superseded."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_training import fit, tiny_recipe

from training.export import export_run
from training.recipe import Recipe, run_identity
from training.seeds import recipe_run_dir, released_run, seed_recipes, seed_statistics
from training.trainer import TrainState, load_trained_model
from zoo.cards import seed_spread
from zoo.data import dataset_spec, load_dataset, to_tensors
from zoo.evaluate import accuracy, predict_logits


def _fake_run(run_dir: Path, seed: int, held_out: float, data: dict[str, Any] | None = None, **train: Any) -> Path:
    """A finished run's result.json (the fields seed selection reads), no weights."""
    raw = tiny_recipe(epochs=1, seed=seed, **train)
    raw["data"] |= data or {}
    run_dir.mkdir(parents=True)
    history = [{"epoch": 1, "train_loss": 1.0, "val_top1": held_out, "val_top5": 99.0, "lr": 0.1, "seconds": 1.0}]
    result = {"recipe": Recipe.from_dict(raw).to_dict(), "metrics": {"top1": 50.0}, "history": history}
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def test_the_released_seed_is_the_best_on_held_out_images_and_ties_go_to_the_lowest_seed(tmp_path):
    runs = [_fake_run(tmp_path / f"s{s}", s, v) for s, v in ((0, 91.0), (1, 92.5), (2, 92.5))]
    assert released_run(runs) == runs[1]
    assert released_run(runs[:1]) == runs[0]


def test_seeds_of_one_release_may_differ_in_their_seed_alone(tmp_path):
    runs = [_fake_run(tmp_path / "a", 0, 90.0), _fake_run(tmp_path / "b", 1, 90.0, batch_size=32)]
    with pytest.raises(ValueError, match=r"b was not trained with .*a's recipe \(sections \['train'\] differ\)"):
        released_run(runs)
    twins = [_fake_run(tmp_path / "c", 3, 90.0), _fake_run(tmp_path / "d", 3, 91.0)]
    with pytest.raises(ValueError, match=r"repeat a seed \(\[3, 3\]\)"):
        released_run(twins)
    with pytest.raises(FileNotFoundError, match="has not finished; resume it with python -m training.train"):
        released_run([tmp_path / "a", tmp_path / "missing"])


def test_seeds_of_one_release_hold_out_the_same_images_or_each_its_own_but_not_a_mix(tmp_path):
    shared = {"holdout": 100, "holdout_seed": 0}
    legacy_s0 = _fake_run(tmp_path / "legacy-s0", 0, 90.0, {"holdout": 100})  # split drawn by its own seed: 0
    shared_s1 = _fake_run(tmp_path / "shared-s1", 1, 91.0, shared)
    assert released_run([legacy_s0, shared_s1]) == shared_s1  # a seed-0 run without holdout_seed holds out the same
    legacy = [legacy_s0, _fake_run(tmp_path / "legacy-s1", 1, 92.0, {"holdout": 100})]
    assert released_run(legacy) == legacy[1]  # each seed its own split, as releases before holdout_seed did
    mixed = [shared_s1, _fake_run(tmp_path / "shared-s2", 2, 90.0, shared), legacy[1]]
    with pytest.raises(ValueError, match=r"legacy-s1'\] hold out other training images .* seeds \[0, 1\]\): "
                       r"retrain them with data.holdout_seed 0"):  # fmt: skip
        released_run(mixed)


def test_regenerate_reuses_a_finished_run_only_under_the_recipe_that_made_it(tmp_path, monkeypatch):
    from training import regenerate

    monkeypatch.setattr(regenerate, "PARKED_DIR", tmp_path / "parked")
    legacy_s1 = _fake_run(tmp_path / "runs" / "tiny-s1", 1, 90.0, {"holdout": 100})  # split drawn by its seed, 1
    raw = tiny_recipe(epochs=1, seed=1)
    regenerate.ensure_finished(legacy_s1, recipe=Recipe.from_dict(raw | {"data": raw["data"] | {"holdout": 100}}))
    today = Recipe.from_dict(raw | {"data": raw["data"] | {"holdout": 100, "holdout_seed": 0}})
    with pytest.raises(ValueError, match=r"tiny-s1 finished under another recipe .*\['data'\] differ\)\. To "
                       r"retrain it with today's recipe, delete .*tiny-s1 and training/parked/tiny-s1"):  # fmt: skip
        regenerate.ensure_finished(legacy_s1, recipe=today)
    assert (legacy_s1 / "result.json").is_file()  # refused, nothing deleted
    (legacy_s1 / "result.json").write_text(json.dumps({"metrics": {"top1": 50.0}}))
    with pytest.raises(ValueError, match="records no recipe"):
        regenerate.ensure_finished(legacy_s1, recipe=today)


def test_a_shared_holdout_seed_holds_out_the_same_images_for_every_seed():
    from training.trainer import training_and_holdout

    def held_out(seed: int, holdout_seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        raw = tiny_recipe(epochs=1, seed=seed)
        raw["data"] |= {"holdout": 300, "holdout_seed": holdout_seed}
        _, (images, labels) = training_and_holdout(Recipe.from_dict(raw))
        return images, labels

    shared_0, shared_1, own_1 = held_out(0, 0), held_out(1, 0), held_out(1, None)
    assert torch.equal(shared_0[0], shared_1[0]) and torch.equal(shared_0[1], shared_1[1])
    assert torch.equal(held_out(0, None)[0], shared_0[0])  # a seed-0 run draws the shared split either way
    assert not torch.equal(own_1[0], shared_0[0])
    legacy = tiny_recipe(epochs=1)
    legacy["data"]["holdout"] = 300
    shared = copy.deepcopy(legacy)
    shared["data"]["holdout_seed"] = 0
    assert run_identity(shared) == run_identity(legacy)  # so seed-0 runs started before holdout_seed resume under it


def test_seed_statistics_are_the_mean_and_sample_std_of_the_test_top1():
    stats = seed_statistics({0: 91.0, 2: 93.0, 1: 92.0}, {0: 90.0, 1: 91.0, 2: 92.0}, released=2)
    assert stats["seeds"] == [0, 1, 2] and stats["top1"] == [91.0, 92.0, 93.0]
    assert stats["top1_mean"] == 92.0 and stats["top1_std"] == 1.0  # sample std (n - 1)
    assert stats["held_out_top1"] == [90.0, 91.0, 92.0] and stats["released_seed"] == 2
    assert seed_spread(stats) == "92.00 ± 1.00 (3 seeds)"
    assert seed_spread(seed_statistics({0: 91.0}, {0: 90.0}, released=0)) == ""


def test_a_seeded_recipe_trains_each_seed_into_its_own_run_dir(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(epochs=1, seeds=[0, 4]))
    dirs = [recipe_run_dir(r, tmp_path) for r in seed_recipes(recipe)]
    assert [d.name for d in dirs] == ["resnet20.tinytest-s0", "resnet20.tinytest-s4"]
    assert recipe_run_dir(Recipe.from_dict(tiny_recipe(epochs=1)), tmp_path).name == "resnet20.tinytest"
    for bad in ([], [1, 1], ["0"]):
        with pytest.raises(ValueError, match="train.seeds must be a list of distinct integers"):
            Recipe.from_dict(tiny_recipe(epochs=1, seeds=bad))


def test_a_recipe_that_gains_notes_or_a_seed_list_or_changes_layout_still_resumes_its_runs_but_not_another_seed():
    started = Recipe.from_dict(tiny_recipe(epochs=1)).to_dict()
    saved = copy.deepcopy(started)
    del saved["train"]["seeds"]  # a state written before recipes had a seed list
    later = Recipe.from_dict({**tiny_recipe(epochs=1, seeds=[0, 1, 2]), "notes": "three seeds"}).to_dict()
    later["train"]["channels_last"] = not started["train"]["channels_last"]
    assert run_identity(saved) == run_identity(later)
    TrainState(later).load_state_dict(TrainState(saved).state_dict())
    other_seed = Recipe.from_dict(tiny_recipe(epochs=1, seed=1)).to_dict()
    with pytest.raises(ValueError, match="written by a different recipe"):
        TrainState(other_seed).load_state_dict(TrainState(saved).state_dict())


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("seeds")
    runs = []
    for seed in (0, 1):
        raw = tiny_recipe(epochs=1, seed=seed, seeds=[0, 1])
        raw["data"]["holdout"] = 100
        runs.append(root / f"resnet20.tinytest-s{seed}")
        fit(raw, runs[-1])
    return runs


@pytest.mark.slow
def test_export_of_several_seeds_records_each_seed_and_the_spread(two_seeds, tmp_path):
    released = released_run(two_seeds)
    config = export_run(released, dest_root=tmp_path / "models", seed_runs=two_seeds)
    seeds = config["zoo"]["metrics"]["seeds"]
    assert seeds["n"] == 2 and seeds["seeds"] == [0, 1]
    released_seed = json.loads((released / "result.json").read_text())["recipe"]["train"]["seed"]
    assert seeds["released_seed"] == released_seed
    assert seeds["top1"][released_seed] == config["zoo"]["metrics"]["top1"]
    other = 1 - released_seed  # measured on the full test split like the release, from its own weights
    spec = dataset_spec("fashion_mnist")
    test_x, test_y = to_tensors(load_dataset("fashion_mnist", "test"), spec)
    logits = predict_logits(load_trained_model(f"run:{two_seeds[other]}"), test_x, spec.mean, spec.std)
    assert seeds["top1"][other] == accuracy(logits, test_y)["top1"]
    card = (tmp_path / "models" / "resnet20.tinytest" / "README.md").read_text()
    assert f"| top-1 over the release's seeds, mean ± std | {seed_spread(seeds)}: seed 0:" in card
    assert f"released: seed {released_seed} (best held-out top-1 at the last epoch)" in card
    assert "python -m training.regenerate resnet20.tinytest" in config["zoo"]["training"]["command"]


@pytest.mark.slow
def test_an_export_over_other_weights_records_what_it_supersedes(two_seeds, tmp_path):
    models = tmp_path / "models"
    first = export_run(two_seeds[0], dest_root=models)
    assert "supersedes" not in first["zoo"]
    again = export_run(two_seeds[0], dest_root=models)  # the same weights replace nothing
    assert "supersedes" not in again["zoo"]
    second = export_run(two_seeds[1], dest_root=models)
    (old,) = second["zoo"]["supersedes"]
    assert old["sha256"] == first["zoo"]["files"]["model.safetensors"]["sha256"]
    assert old["top1"] == first["zoo"]["metrics"]["top1"]
    card = (models / "resnet20.tinytest" / "README.md").read_text()
    assert f"| `{old['sha256']}` | {old['top1']:.2f} |" in card


@pytest.mark.slow
def test_regenerate_trains_every_seed_then_exports_the_best_on_held_out(two_seeds, tmp_path, monkeypatch):
    from training import regenerate

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for run_dir in two_seeds:  # finished runs are only exported, not retrained
        (runs_dir / run_dir.name).symlink_to(run_dir)
    raw = tiny_recipe(epochs=1, seeds=[0, 1])
    raw["data"]["holdout"] = 100
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "resnet20.tinytest.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(regenerate, "RECIPES_DIR", recipes)
    exported: list[tuple[Path, list[Path]]] = []
    monkeypatch.setattr(regenerate, "export_run", lambda d, seed_runs=None: exported.append((d, seed_runs)))
    regenerate.main(["resnet20.tinytest", "--runs-dir", str(runs_dir)])
    seed_dirs = [runs_dir / d.name for d in two_seeds]
    assert exported == [(released_run(seed_dirs), seed_dirs)]


def test_a_run_started_from_a_trial_recipe_names_the_release_recipe_that_trains_the_same(tmp_path, monkeypatch):
    from training import export

    monkeypatch.setattr(export, "repo_root", lambda: tmp_path)
    run_recipe = Recipe.from_dict(tiny_recipe(epochs=1, seed=1))
    result = {"recipe_path": "training/recipes/next/resnet20.tinytest.yaml"}
    assert export.release_recipe_path(run_recipe, result) == result["recipe_path"]  # no release recipe yet
    release = tmp_path / "training" / "recipes" / "resnet20.tinytest.yaml"
    release.parent.mkdir(parents=True)
    release.write_text(yaml.safe_dump({**tiny_recipe(epochs=1, seeds=[0, 1, 2]), "notes": "promoted"}))
    assert export.release_recipe_path(run_recipe, result) == "training/recipes/resnet20.tinytest.yaml"
    release.write_text(yaml.safe_dump(tiny_recipe(epochs=2)))  # trains something else: the run keeps its own
    assert export.release_recipe_path(run_recipe, result) == result["recipe_path"]


def test_the_leaderboard_and_zoo_list_show_the_spread_of_a_release_of_several_seeds(monkeypatch):
    from zoo import cli
    from zoo import leaderboard as lb

    stats = seed_statistics({0: 91.0, 1: 92.0, 2: 93.0}, {0: 90.0, 1: 91.0, 2: 92.0}, released=2)
    fields = lb.seed_fields(stats)
    assert fields == {"seeds": 3, "seeds_top1_mean": 92.0, "seeds_top1_std": 1.0}
    assert lb._seed_cell(fields) == "92.00 ± 1.00 (n=3)"
    assert lb._seed_cell(lb.seed_fields(None)) == "-"
    entry = {"compression": {"method": "bnn", "weight_bits": 1, "activation_bits": 1, "params": 1, "flops": 1,
                             "bops": 1, "dense_parent": None}, "file_size": 1,
             "metrics": {"top1": 93.0, "dataset": "fashion_mnist", "seeds": stats}}  # fmt: skip
    monkeypatch.setattr("zoo.registry.load_manifest", lambda: {"x.fmnist": entry})
    (row,) = cli._list_rows()
    assert row["seeds: mean ± std"] == "92.00 ± 1.00 (3 seeds)"


def test_what_an_export_supersedes_keeps_the_older_chain(tmp_path):
    from training.export import superseded_records

    assert superseded_records(tmp_path / "none") == []
    older = {"sha256": "a" * 64, "top1": 80.0, "schedule": "6 epochs", "commit": "c0"}
    meta = {"files": {"model.safetensors": {"sha256": "b" * 64}}, "metrics": {"top1": 90.0},
            "training": {"schedule": "40 epochs", "commit": "c1"}, "supersedes": [older]}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps({"zoo": meta}))
    assert superseded_records(tmp_path) == [
        older,
        {"sha256": "b" * 64, "top1": 90.0, "schedule": "40 epochs", "commit": "c1"},
    ]
