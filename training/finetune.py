"""Fine-tune a released checkpoint on another dataset, against the same architecture trained from scratch.

    zoo finetune resnet20_bnn.fmnist --dataset mnist_5k --num-classes 10 [--freeze-backbone]

The checkpoint keeps its architecture and shape (binary layers stay binary, pruned widths stay pruned) and gets
a new classifier head. The fine-tune's recipe is written to ``training/recipes/<new id>.yaml``; a twin run
from random initialisation with the same data, schedule and seed gives the baseline, and both accuracies (on
the dataset's held-out test split) go into the new checkpoint's config.json and card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from training.export import export_run
from training.recipe import Recipe
from training.trainer import Trainer
from zoo.data import dataset_spec
from zoo.errors import DataError
from zoo.registry import manifest_entry

RECIPES_DIR = Path(__file__).with_name("recipes")


def finetune_recipe(
    source: str, dataset: str, new_id: str, epochs: int, lr: float, batch_size: int, freeze_backbone: bool
) -> dict[str, Any]:
    """The recipe (as a dict) that fine-tunes ``source`` on ``dataset``."""
    entry = manifest_entry(source)
    return {
        "id": new_id,
        "notes": f"{source} fine-tuned on {dataset} (new head{', frozen backbone' if freeze_backbone else ''}).",
        "model": {
            "architecture": entry["architecture"],
            "args": entry["model_args"],
            "pretrained": source,
            "freeze_backbone": freeze_backbone,
        },
        "data": {"dataset": dataset, "crop_padding": 2, "hflip": False},  # digits are not mirror-symmetric
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4},
        "schedule": {"name": "cosine", "warmup_fraction": 0.1},
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": 0},
        "export": {"method": entry["compression"]["method"], "finetuned_from": source},
    }


def finetune(
    source: str,
    dataset: str,
    num_classes: int,
    new_id: str | None = None,
    epochs: int = 5,
    lr: float = 0.05,
    batch_size: int = 128,
    freeze_backbone: bool = False,
    runs_dir: Path = Path("runs"),
    compare_scratch: bool = True,
    models_dir: Path | None = None,
    recipes_dir: Path = RECIPES_DIR,
) -> dict[str, Any]:
    """Fine-tune, train the from-scratch twin, export ``models/<new id>``; return the new config."""
    spec = dataset_spec(dataset)
    if num_classes != spec.num_classes:
        raise DataError(f"--num-classes {num_classes} does not match {spec.name}, which has {spec.num_classes}.")
    new_id = new_id or f"{manifest_entry(source)['architecture']}.{spec.name.replace('_', '')}"
    raw = finetune_recipe(source, spec.name, new_id, epochs, lr, batch_size, freeze_backbone)
    recipe_path = recipes_dir / f"{new_id}.yaml"
    recipe_path.write_text(f"# Written by `zoo finetune {source} --dataset {spec.name}`.\n" + yaml.safe_dump(raw))
    return train_finetune(recipe_path, runs_dir, models_dir, compare_scratch)


def train_finetune(
    recipe_path: Path, runs_dir: Path = Path("runs"), models_dir: Path | None = None, compare_scratch: bool = True
) -> dict[str, Any]:
    """Train a fine-tuning recipe and its from-scratch twin (same data, schedule, seed), then export."""
    recipe = Recipe.load(recipe_path)
    if not (runs_dir / recipe.id / "result.json").exists():
        Trainer(recipe, runs_dir / recipe.id).fit()
    extra = {}
    if compare_scratch:
        scratch = Recipe.load(recipe_path, overrides=[f"id={recipe.id}.scratch", "model.pretrained=null",
                                                      "model.freeze_backbone=false"])  # fmt: skip
        result = Trainer(scratch, runs_dir / scratch.id).fit()
        extra["scratch_top1"] = result["metrics"]["top1"]
    return export_run(runs_dir / recipe.id, models_dir, extra_metrics=extra)
