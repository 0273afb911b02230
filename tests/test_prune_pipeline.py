"""The prune/search stage of training: end to end on a tiny budget, and stop-and-resume between steps.

The dense parent is the released ``resnet20.fmnist`` (a ResNet-20 stands in for the ResNet-56 of the release
recipes), so every stage runs on real trained weights in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import zoo
from training.export import export_run
from training.prune import PLAN_FILE, STAGE_DIR, TrainingImages, _short_training
from training.recipe import Recipe
from training.train import train_recipe
from zoo.cli import _reference_entry, _versus_parent
from zoo.measure import count_macs

REPO = Path(__file__).resolve().parent.parent
PARENT = "resnet20.fmnist"

TINY = {
    "model": {"architecture": "resnet20"},
    "data": {"dataset": "fashion_mnist", "crop_padding": 2, "hflip": True, "limit": 512, "test_limit": 200},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 1, "batch_size": 64, "seed": 0, "checkpoint_every": 4, "eval_batch_size": 200},
}


def tiny_recipe(tmp_path: Path, method: str, **prune: object) -> Path:
    raw = json.loads(json.dumps(TINY))
    raw["id"] = f"resnet20_{method}.tiny"
    raw["prune"] = {"method": method, "parent": PARENT, **prune}
    raw["export"] = {"method": method if method != "acp" else "acp", "dense_parent": PARENT}
    if method == "acp":
        raw["data"]["holdout"] = 200
    if method == "aip":
        raw["train"]["objective"] = "aip"
        raw["train"]["teacher"] = {"checkpoint": PARENT}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run(recipe: Path, run_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "training.train", str(recipe), "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    return proc


def _kill_when(recipe: Path, run_dir: Path, ready) -> None:
    """Start a run and SIGKILL it as soon as ``ready()`` holds."""
    cmd = [sys.executable, "-m", "training.train", str(recipe), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.time() < deadline, "the kill point was never reached"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_l1_pipeline_exports_a_pruned_checkpoint_that_loads_from_its_config(tmp_path: Path) -> None:
    recipe = Recipe.load(tiny_recipe(tmp_path, "l1", flops_reduction=0.4))
    run_dir = tmp_path / "runs" / recipe.id
    train_recipe(recipe, run_dir)
    plan = json.loads((run_dir / STAGE_DIR / PLAN_FILE).read_text())
    assert plan["pruned_summary"]["flops"] <= 0.6 * plan["parent_summary"]["flops"]

    config = export_run(run_dir, dest_root=tmp_path / "models")
    assert config["model_args"]["inner_widths"] == plan["model_args"]["inner_widths"]
    assert config["zoo"]["pruning"]["parent_summary"] == plan["parent_summary"]
    assert "## Pruning" in (tmp_path / "models" / recipe.id / "README.md").read_text()

    model = zoo.from_pretrained(f"local-dir:{tmp_path / 'models' / recipe.id}")
    assert [b.conv1.out_channels for b in zoo.prune.prunable_blocks(model)] == plan["model_args"]["inner_widths"]
    assert count_macs(model, (1, 28, 28))["flops"] == config["zoo"]["compression"]["flops"]
    rebuilt = timm.create_model("resnet20", in_chans=1, **config["model_args"])
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}


def test_a_model_pruned_from_an_unreleased_run_is_compared_with_that_run(tmp_path: Path) -> None:
    """A parent too large to release (e.g. the dense VGG-19) is a run, trained first by its recipe when missing:
    its top-1 and shape go into the card and ``zoo list``, and it is timed beside the pruned model at export."""
    dense = json.loads(json.dumps(TINY)) | {"id": "resnet20.tiny"}
    (tmp_path / "dense.yaml").write_text(yaml.safe_dump(dense))
    parent_run = tmp_path / "runs" / "resnet20.tiny"
    path = tiny_recipe(tmp_path, "l1", flops_reduction=0.4)
    raw = yaml.safe_load(path.read_text())
    raw["prune"] |= {"parent": f"run:{parent_run}", "parent_run_recipe": str(tmp_path / "dense.yaml")}
    raw["export"].pop("dense_parent")
    path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "runs" / raw["id"]
    train_recipe(Recipe.load(path), run_dir)
    parent_result = json.loads((parent_run / "result.json").read_text())

    config = export_run(run_dir, dest_root=tmp_path / "models")
    reference = config["zoo"]["compression"]["dense_reference"]
    assert reference["id"] == "resnet20.tiny" and reference["released"] is False
    assert reference["top1"] == parent_result["metrics"]["top1"] == config["zoo"]["metrics"]["dense_parent_top1"]
    assert reference["flops"] == json.loads((run_dir / STAGE_DIR / PLAN_FILE).read_text())["parent_summary"]["flops"]
    assert "dense parent (fp32)" in config["zoo"]["speed"]["results"]
    card = (tmp_path / "models" / raw["id"] / "README.md").read_text()
    assert "`resnet20.tiny` (not released" in card and "CPU speed-up at batch 64" in card
    entry = {"compression": config["zoo"]["compression"], "metrics": config["zoo"]["metrics"]}
    assert _versus_parent(entry, _reference_entry(entry)).startswith("resnet20.tiny (not released): OPs -4")


def test_acp_fitness_training_runs_as_many_epochs_as_its_image_budget_needs(tmp_path: Path) -> None:
    recipe = Recipe.load(tiny_recipe(tmp_path, "acp"))  # 312 training images left: 4 batches of 64 per epoch
    images = TrainingImages(recipe)
    model = timm.create_model("resnet20", in_chans=1)
    seen = []
    model.register_forward_hook(lambda _m, inputs, _out: seen.append(len(inputs[0])))
    recipe.prune.fitness_images = 640
    _short_training(model, images, recipe, seed=0)
    assert seen == [64] * 10  # 2.5 epochs


@pytest.mark.slow
def test_acp_search_killed_mid_swarm_resumes_with_the_same_result(tmp_path: Path) -> None:
    recipe = tiny_recipe(
        tmp_path, "acp", eps=0.2, score_images=200, fitness_images=128,
        swarm={"particles": 3, "cycles": 2, "dims_per_move": 4, "seed": 0},
    )  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(recipe, straight)
    memo = killed / STAGE_DIR / "fitness.json"
    _kill_when(recipe, killed, lambda: memo.exists() and len(json.loads(memo.read_text() or "{}")) >= 3)
    before = json.loads(memo.read_text())
    assert not (killed / STAGE_DIR / PLAN_FILE).exists()

    resumed = _run(recipe, killed)
    assert resumed.stdout.count("fitness ") == len(json.loads(memo.read_text())) - len(before)
    a = json.loads((straight / STAGE_DIR / PLAN_FILE).read_text())
    b = json.loads((killed / STAGE_DIR / PLAN_FILE).read_text())
    for key in ("cluster_widths", "search_widths", "best_holdout_top1", "history", "model_args"):
        assert a[key] == b[key], key
    assert json.loads(memo.read_text()) == json.loads((straight / STAGE_DIR / "fitness.json").read_text())


@pytest.mark.slow
def test_aip_killed_after_a_pruning_step_resumes_without_redoing_it(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "aip", flops_reduction=0.4, aip={"steps": 2, "recover_images": 128})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(recipe, straight)
    step1 = killed / STAGE_DIR / "step1" / "final.safetensors"
    _kill_when(recipe, killed, (step1.parent / "result.json").exists)  # written last: the step has finished
    stamp = step1.stat().st_mtime_ns
    _run(recipe, killed)
    assert step1.stat().st_mtime_ns == stamp, "the finished pruning step was redone"
    a, b = load_file(straight / "final.safetensors"), load_file(killed / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
