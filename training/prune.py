"""The prune/search stage of a pruning recipe, run by ``python -m training.train`` before the final training.

The stage writes ``<run>/prune/``: ``pruned.safetensors`` (the pruned model's weights) and, last, ``plan.json``
(widths, kept channels, what the search saw). A finished stage is reused; an interrupted one resumes from its
own saved pieces (the UCP parent run, ACP's memoised fitness values, AIP's per-step runs). The final training
then runs on the recipe resolved here: the pruned widths as ``model.args``, and the kept weights as
``init_from`` unless the method retrains from scratch.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from safetensors.torch import save_file

from training.recipe import Recipe, section_from_dict
from training.trainer import (
    RUN_PREFIX,
    Trainer,
    create_recipe_model,
    load_trained_model,
    run_finished,
    training_and_holdout,
    write_json_atomically,
)
from zoo.data import BatchAugment, BatchIterator, dataset_spec
from zoo.data.augment import normalize
from zoo.evaluate import accuracy, predict_logits
from zoo.hub import read_safetensors
from zoo.measure import model_summary
from zoo.prune import apply_plan, keep_all, keep_top, pruned_model_args
from zoo.prune.acp import cluster_widths, dimension_bounds, inherit_by_l1, layer_widths_at
from zoo.prune.aip import AIPSettings, step_reductions
from zoo.prune.budget import widths_for_reduction
from zoo.prune.importance import data_free_importance
from zoo.prune.l1 import l1_plan
from zoo.prune.swarm import SwarmSettings, particle_swarm
from zoo.prune.ucp import important_counts, ucp_plan

STAGE_DIR = "prune"
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "pruned.safetensors"


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)


class TrainingImages:
    """The recipe's training split, split into the part that trains and the held-out part (never the test)."""

    def __init__(self, recipe: Recipe) -> None:
        self.spec = dataset_spec(recipe.data.dataset)
        # The trainer's own split: the final training never sees the held-out images either.
        (self.train_x, self.train_y), (self.held_x, self.held_y) = training_and_holdout(recipe)
        self.seed = recipe.train.seed
        self.shuffled = recipe.data.holdout > 0  # the split comes shuffled only when some images are held out

    def scoring_batches(self, count: int, batch_size: int = 250) -> Iterator[torch.Tensor]:
        """``count`` training images drawn at random (by the recipe's seed), normalised.

        Drawn, not the first ones: an image folder lists ImageNet class by class.
        """
        n = min(count, len(self.train_y))
        generator = torch.Generator().manual_seed(self.seed)
        picks = torch.arange(n) if self.shuffled else torch.randperm(len(self.train_y), generator=generator)[:n]
        for i in range(0, n, batch_size):
            yield normalize(self.train_x[picks[i : i + batch_size]], self.spec.mean, self.spec.std)


def load_parent(recipe: Recipe, stage: Path) -> torch.nn.Module:
    """The network that is pruned (or, for UCP, the reference its results are compared with).

    Without ``prune.parent``, UCP's reference is its SE-augmented parent with the gates removed: the dense shape.
    """
    p = recipe.prune
    if p.parent and p.parent.startswith(RUN_PREFIX) and p.parent_run_recipe:  # train it first when missing
        return train_parent_recipe(p.parent_run_recipe, Path(p.parent[len(RUN_PREFIX) :]))
    if p.parent:
        return load_trained_model(p.parent)
    if p.method == "ucp" and p.parent_recipe:
        se_parent = train_se_parent(recipe, stage)
        return apply_plan(se_parent, keep_all(se_parent), drop_mseb=True)
    raise ValueError(f"prune.parent is missing: {p.method} prunes a trained parent (a checkpoint id or run:<run dir>)")


def train_parent_recipe(recipe_path: str, run_dir: Path) -> torch.nn.Module:
    """Train (or resume, or reuse) a parent recipe in ``run_dir`` and return the trained model."""
    parent_recipe = Recipe.load(recipe_path)
    if not run_finished(run_dir):
        Trainer(parent_recipe, run_dir).fit()
    model = create_recipe_model(parent_recipe)
    model.load_state_dict(read_safetensors(run_dir / "final.safetensors"), strict=True)
    return model.eval()


def l1_stage(
    recipe: Recipe, stage: Path, images: TrainingImages, parent: torch.nn.Module
) -> tuple[torch.nn.Module, dict[str, Any]]:
    plan = l1_plan(parent, recipe.prune.flops_reduction, images.spec.input_size)
    return apply_plan(parent, plan), {"criterion": "l1 filter norm", "kept": plan.to_dict()["keep"]}


def se_parent_run(recipe: Recipe, stage: Path) -> Path:
    """Where UCP's SE-augmented parent trains: ``runs/<its id>``, beside the run being pruned."""
    if not recipe.prune.parent_recipe:
        raise ValueError("UCP scores channels with an SE-augmented parent: set prune.parent_recipe")
    return stage.parent.parent / Recipe.load(recipe.prune.parent_recipe).id


def train_se_parent(recipe: Recipe, stage: Path) -> torch.nn.Module:
    return train_parent_recipe(recipe.prune.parent_recipe, se_parent_run(recipe, stage))


def ucp_stage(
    recipe: Recipe, stage: Path, images: TrainingImages, parent: torch.nn.Module
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Scores come from the SE-augmented parent; ``parent`` (dense) is only the reference."""
    se_parent = train_se_parent(recipe, stage)
    p = recipe.prune
    plan, gates = ucp_plan(se_parent, images.scoring_batches(p.score_images), p.threshold_factor, p.unpruned_layers)
    record = {
        "se_parent_run": str(se_parent_run(recipe, stage)),
        "unpruned_layers": p.unpruned_layers,
        "important_counts": important_counts(gates, p.threshold_factor),
        "mean_gates": [[round(float(v), 5) for v in g] for g in gates],
    }
    return apply_plan(se_parent, plan, drop_mseb=True), record


def _short_training(model: torch.nn.Module, images: TrainingImages, recipe: Recipe, seed: int) -> None:
    """ACP's fitness training (shortened): constant-lr SGD over ``fitness_images`` training images."""
    p, r = recipe.prune, recipe
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    transform = BatchAugment(images.spec.mean, images.spec.std, r.data.crop_padding, r.data.hflip)
    loader = BatchIterator(images.train_x, images.train_y, r.train.batch_size, transform, shuffle=True,
                           augment=True, seed=seed, drop_last=True)  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=p.fitness_lr, momentum=0.9, weight_decay=1e-4)
    if len(loader) == 0:
        raise ValueError(f"ACP's fitness training needs at least one batch of {r.train.batch_size} training images")
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    batches = itertools.chain.from_iterable(loader.epoch(epoch) for epoch in itertools.count())
    for x, y in itertools.islice(batches, math.ceil(p.fitness_images / r.train.batch_size)):  # epochs as needed
        loss = torch.nn.functional.cross_entropy(model(x.to(accelerator.device)), y.to(accelerator.device))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
    accelerator.free_memory()


def acp_stage(
    recipe: Recipe, stage: Path, images: TrainingImages, parent: torch.nn.Module
) -> tuple[torch.nn.Module, dict[str, Any]]:
    p = recipe.prune
    if not len(images.held_y):
        raise ValueError("ACP measures fitness on held-out training images: set data.holdout > 0")
    center = cluster_widths(parent, images.scoring_batches(p.score_images), p.eps, p.min_samples)
    evaluations: list[float] = []

    def fitness(position: list[int]) -> float:
        start = time.time()
        candidate = inherit_by_l1(parent, position)
        _short_training(candidate, images, recipe, seed=recipe.train.seed)
        top1 = accuracy(predict_logits(candidate, images.held_x, images.spec.mean, images.spec.std), images.held_y)
        evaluations.append(time.time() - start)
        channels = sum(layer_widths_at(parent, position))
        print(f"  fitness {top1['top1']:.2f}% at {channels} channels ({evaluations[-1]:.1f} s)", flush=True)
        return top1["top1"]

    settings = section_from_dict(SwarmSettings, p.swarm, "prune.swarm")
    result = particle_swarm(fitness, center, dimension_bounds(parent), settings, memo_path=stage / "fitness.json")
    record = {
        "cluster_widths": center,
        "search_widths": result.best_position,
        "best_holdout_top1": result.best_fitness,
        "fitness_evaluations": result.evaluations,
        "history": result.history,
        "swarm": vars(settings),
    }
    return inherit_by_l1(parent, result.best_position), record


def aip_stage(
    recipe: Recipe, stage: Path, images: TrainingImages, parent: torch.nn.Module
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Iterative pruning: each step removes channels by the criterion, then recovers with the AIP objective."""
    settings = section_from_dict(AIPSettings, recipe.prune.aip, "prune.aip")
    student, steps = parent, []
    for k, reduction in enumerate(step_reductions(recipe.prune.flops_reduction, settings.steps), start=1):
        step_dir = stage / f"step{k}"
        step_dir.mkdir(parents=True, exist_ok=True)
        widths = widths_for_reduction(parent, reduction, images.spec.input_size)
        pruned = apply_plan(student, keep_top(data_free_importance(settings.criterion, student), widths))
        _save_weights(pruned, step_dir / "start.safetensors")
        recovery = copy.deepcopy(recipe)
        recovery.id = f"{recipe.id}/step{k}"
        recovery.model.args = {**recipe.model.args, **pruned_model_args(pruned)}
        recovery.model.init_from = str(step_dir / "start.safetensors")
        recovery.data.limit = settings.recover_images
        recovery.train.epochs = 1
        recovery.schedule.name, recovery.schedule.warmup_fraction = "constant", 0.0
        if not run_finished(step_dir):
            Trainer(recovery, step_dir).fit()
        student = create_recipe_model(recovery)
        student.load_state_dict(read_safetensors(step_dir / "final.safetensors"), strict=True)
        result = json.loads((step_dir / "result.json").read_text())
        steps.append(
            {"step": k, "flops_reduction": reduction, "widths": widths, "test_top1": result["metrics"]["top1"]}
        )
        print(f"AIP step {k}: FLOPs -{reduction:.0%}, {sum(widths)} channels", flush=True)
    return student.eval(), {"criterion": settings.criterion, "steps": steps, "settings": vars(settings)}


Stage = Callable[[Recipe, Path, TrainingImages, torch.nn.Module], tuple[torch.nn.Module, dict[str, Any]]]
STAGES: dict[str, Stage] = {
    "l1": l1_stage,
    "ucp": ucp_stage,
    "acp": acp_stage,
    "aip": aip_stage,
}


def run_stage(recipe: Recipe, stage: Path) -> dict[str, Any]:
    """Run the recipe's prune/search stage into ``stage`` and return its record (also in plan.json)."""
    method = recipe.prune.method
    if method not in STAGES:
        raise ValueError(f"unknown pruning method '{method}' (use one of {sorted(STAGES)})")
    stage.mkdir(parents=True, exist_ok=True)
    images = TrainingImages(recipe)
    started = time.time()
    parent = load_parent(recipe, stage)
    pruned, record = STAGES[method](recipe, stage, images, parent)
    record = {
        "method": method,
        "parent": recipe.prune.parent,
        "model_args": pruned_model_args(pruned),
        "parent_summary": model_summary(parent, images.spec.input_size),
        "pruned_summary": model_summary(pruned, images.spec.input_size),
        "stage_seconds": round(time.time() - started, 1),
        **record,
    }
    _save_weights(pruned, stage / WEIGHTS_FILE)
    write_json_atomically(record, stage / PLAN_FILE)  # last: its presence marks a finished stage
    return record


def resolve_pruned_recipe(recipe: Recipe, run_dir: Path) -> Recipe:
    """Run (or reuse) the prune stage and return the recipe of the final training on the pruned shape."""
    stage = run_dir / STAGE_DIR
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process and not (stage / PLAN_FILE).exists():
            run_stage(recipe, stage)
    record = json.loads((stage / PLAN_FILE).read_text())
    resolved = copy.deepcopy(recipe)
    resolved.model.args = {**recipe.model.args, **record["model_args"]}
    if recipe.prune.init == "inherit":
        resolved.model.init_from = str(stage / WEIGHTS_FILE)
    elif recipe.prune.init != "scratch":
        raise ValueError(f"prune.init must be 'inherit' or 'scratch', got '{recipe.prune.init}'")
    return resolved
