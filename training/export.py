"""Export a finished run to ``models/<id>``: ``python -m training.export runs/<id> [--models-dir models]``.

Accuracy, parameters, FLOPs/BOPs, size and sha256 are all measured here by code; golden logits on the
first test images are stored under ``test/`` so tests can check the weights reproduce them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import zoo
from training.prune import PLAN_FILE, STAGE_DIR
from training.recipe import Recipe
from training.seeds import final_held_out_top1, read_result, released_run, seed_statistics, seedless_identity
from training.trainer import RUN_PREFIX, create_recipe_model, load_trained_model
from zoo.bench import measure_checkpoint_speed
from zoo.cards import render_card, rerender_cards, seed_spread
from zoo.checkpoint import state_dict_for_saving, write_checkpoint_folder
from zoo.data import dataset_spec, load_dataset, to_tensors
from zoo.evaluate import accuracy, predict_logits
from zoo.inference import PACKED_LAYOUT, pack_binary_weights, unpack_binary_weights
from zoo.measure import model_summary
from zoo.registry import CONFIG_NAME, manifest_entry, models_dir, repo_root, write_manifest

GOLDEN_FILE = "test/golden.safetensors"
GOLDEN_IMAGES = 16


def describe_schedule(recipe: Recipe) -> str:
    opt, sch, tr = recipe.optimizer, recipe.schedule, recipe.train
    return (f"{tr.epochs} epochs, batch {tr.batch_size}, {opt.name} lr {opt.lr} ({sch.name}, "
            f"warm-up {sch.warmup_fraction:.0%}), weight decay {opt.weight_decay}, seed {tr.seed}")  # fmt: skip


def release_recipe_path(recipe: Recipe, result: dict[str, Any]) -> str:
    """The recipe that regenerates the run: the release recipe ``training/recipes/<id>.yaml`` when it trains the
    same thing (seed aside; e.g. a trial recipe promoted to release after its runs), else the run's own file."""
    release = f"training/recipes/{recipe.id}.yaml"
    path = repo_root() / release
    if path.is_file() and seedless_identity(Recipe.load(path).to_dict()) == seedless_identity(recipe.to_dict()):
        return release
    return result.get("recipe_path") or release


def training_command(recipe: Recipe, recipe_path: str) -> str:
    """The command that regenerates the checkpoint (training resumes where a killed run stopped)."""
    path = repo_root() / recipe_path
    seeds = Recipe.load(path).train.seeds if path.is_file() else recipe.train.seeds
    if seeds:
        return f"python -m training.regenerate {recipe.id}  # trains seeds {seeds}, then exports"
    return f"python -m training.train {recipe_path} && python -m training.export runs/{recipe.id}"


def superseded_records(folder: Path) -> list[dict[str, Any]]:
    """What an export replaces: the checkpoint already in ``folder`` (and what it replaced), oldest first."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        return []
    meta = json.loads(config_path.read_text())["zoo"]
    record = {"sha256": meta["files"]["model.safetensors"]["sha256"], "top1": meta["metrics"]["top1"],
              "schedule": meta["training"]["schedule"], "commit": meta["training"]["commit"]}  # fmt: skip
    return [*meta.get("supersedes", []), record]


def seed_metrics(
    released_dir: Path,
    released_top1: float,
    seed_runs: list[Path],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    spec: Any,
) -> dict[str, Any]:
    """The released run's seed statistics: every other seed's final weights measured on the same test split."""
    results = {d: read_result(d) for d in seed_runs}
    if released_dir.resolve() not in {d.resolve() for d in seed_runs}:
        raise ValueError(f"{released_dir} is not among the seed runs {[str(d) for d in seed_runs]}")
    top1, held_out, released_seed = {}, {}, None
    for run_dir, result in results.items():
        seed = result["recipe"]["train"]["seed"]
        held_out[seed] = final_held_out_top1(result, run_dir)
        if run_dir.resolve() == released_dir.resolve():
            top1[seed], released_seed = released_top1, seed
            continue
        logits = predict_logits(load_trained_model(f"{RUN_PREFIX}{run_dir}"), test_x, spec.mean, spec.std)
        top1[seed] = accuracy(logits, test_y)["top1"]
    return {"seeds": seed_statistics(top1, held_out, released_seed)}


def parent_metrics(parent_id: str | None) -> dict[str, Any]:
    """The dense parent's measured top-1 as recorded in the registry (it must be exported first)."""
    if parent_id is None:
        return {}
    parent = manifest_entry(parent_id)["metrics"]
    seeds = parent.get("seeds")
    return {"dense_parent_top1": parent["top1"], **({"dense_parent_seeds": seeds} if seeds else {})}


def unreleased_parent(pruning: dict[str, Any] | None) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """For a model pruned from a training run that is not released (too large to ship, e.g. a dense VGG-19):
    that run's model (to time beside this one) and what the card and ``zoo list`` show of it."""
    reference = (pruning or {}).get("parent") or ""
    if not reference.startswith(RUN_PREFIX):
        return None, {}
    result = json.loads((Path(reference[len(RUN_PREFIX) :]) / "result.json").read_text())
    parent_recipe = Recipe.from_dict(result["recipe"], result.get("recipe_path"))
    fields = {"id": parent_recipe.id, "recipe": result.get("recipe_path"), "released": False,
              **pruning["parent_summary"], "top1": result["metrics"]["top1"]}  # fmt: skip
    return load_trained_model(reference), fields


PRUNING_RECORD_FIELDS = ("parent", "parent_summary", "pruned_summary", "stage_seconds", "criterion",
                         "important_counts", "cluster_widths", "search_widths", "best_holdout_top1",
                         "fitness_evaluations", "history", "swarm", "steps", "settings")  # fmt: skip


def pruning_record(run_dir: Path) -> dict[str, Any] | None:
    """What the prune/search stage did (from ``<run>/prune/plan.json``), without the per-channel lists."""
    plan = run_dir / STAGE_DIR / PLAN_FILE
    if not plan.exists():
        return None
    record = json.loads(plan.read_text())
    return {"method": record["method"], **{k: record[k] for k in PRUNING_RECORD_FIELDS if k in record}}


def build_config(
    model: torch.nn.Module,
    recipe: Recipe,
    result: dict[str, Any],
    metrics: dict[str, Any],
    speed: dict[str, Any],
    pruning: dict[str, Any] | None = None,
    dense_reference: dict[str, Any] | None = None,
    float16_head: bool = False,
    supersedes: list[dict[str, Any]] | None = None,
) -> dict:
    """config.json: timm's fields at the root (so timm's hf-hub loader reads it) and the zoo's under ``zoo``."""
    spec = dataset_spec(recipe.data.dataset)
    summary = model_summary(model, spec.input_size)
    binary = any(getattr(m, "binary", False) for m in model.modules())
    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("architecture", "tag", "hf_hub_id",
                      "sha256", "hf_hub_revision", "local_dir", "compression", "source", "file", "url")}  # fmt: skip
    pretrained_cfg.update(
        input_size=list(spec.input_size), mean=list(spec.mean), std=list(spec.std), num_classes=spec.num_classes,
        crop_pct=1.0, label_names=list(spec.label_names) if spec.label_names else None,
    )  # fmt: skip
    recipe_path = release_recipe_path(recipe, result)
    return {
        "architecture": recipe.model.architecture,
        "num_classes": spec.num_classes,
        "num_features": model.num_features,
        "global_pool": getattr(getattr(model, "global_pool", None), "pool_type", ""),
        "model_args": dict(recipe.model.args),
        "pretrained_cfg": {k: v for k, v in pretrained_cfg.items() if v is not None},
        "zoo": {
            "id": recipe.id,
            "compression": {
                "method": recipe.export.method,
                "dense_parent": recipe.export.dense_parent,
                "finetuned_from": recipe.export.finetuned_from,
                **({"dense_reference": dense_reference} if dense_reference else {}),
                "weight_bits": 1 if binary else 32,
                "activation_bits": 1 if binary else 32,
                **summary,
            },
            "metrics": {
                "dataset": spec.name,
                "dataset_hub_id": spec.hub_id,
                "split": "test",
                **metrics,
                **parent_metrics(recipe.export.dense_parent),
                **({"dense_parent_top1": dense_reference["top1"]} if dense_reference else {}),
            },
            "storage": {
                "binary_weights": PACKED_LAYOUT if binary else "none",
                "classifier_weights": "float16" if float16_head else "float32",
            },
            "speed": speed,
            **({"pruning": pruning} if pruning else {}),
            **({"supersedes": supersedes} if supersedes else {}),
            "training": {
                "recipe": recipe_path,
                "command": training_command(recipe, recipe_path),
                "commit": result["commit"],
                "schedule": describe_schedule(recipe),
                "num_processes": result["num_processes"],
                "history": result["history"],
                "recipe_content": recipe.to_dict(),
            },
        },
    }


def export_run(
    run_dir: Path,
    dest_root: Path | None = None,
    extra_metrics: dict[str, Any] | None = None,
    float16_head: bool = False,
    seed_runs: list[Path] | None = None,
) -> dict[str, Any]:
    """Write ``<dest_root>/<id>`` from a finished run and refresh the package manifest.

    ``extra_metrics`` (e.g. the from-scratch accuracy a fine-tuned model is compared with) go into config.json.
    ``float16_head`` stores the classifier's weight matrix in float16 (the top-1 is then measured on the model
    as stored). ``seed_runs``: every run of the recipe's seeds (``run_dir`` among them), whose test top-1 spread
    the card reports. A checkpoint already at the destination is recorded as superseded (unless the weights are the
    same).
    """
    result = json.loads((run_dir / "result.json").read_text())
    recipe = Recipe.from_dict(result["recipe"], result.get("recipe_path"))
    spec = dataset_spec(recipe.data.dataset)
    model = create_recipe_model(recipe)
    model.load_state_dict(load_file(run_dir / "final.safetensors"), strict=True)
    stored = pack_binary_weights(model, state_dict_for_saving(model), float16_head)
    if float16_head:  # measure the model as it will load: a half-precision classifier
        model.load_state_dict(unpack_binary_weights(stored, model), strict=True)
    test_x, test_y = to_tensors(load_dataset(spec.name, "test"), spec)
    logits = predict_logits(model, test_x, spec.mean, spec.std, progress=True)
    metrics = {**accuracy(logits, test_y), **(extra_metrics or {})}
    if seed_runs:
        metrics.update(seed_metrics(run_dir, metrics["top1"], seed_runs, test_x, test_y, spec))
    golden = {"images": test_x[:GOLDEN_IMAGES].contiguous(), "logits": logits[:GOLDEN_IMAGES].contiguous()}
    pruning = pruning_record(run_dir)
    parent, dense_reference = (
        (zoo.from_pretrained(recipe.export.dense_parent), None)
        if recipe.export.dense_parent
        else unreleased_parent(pruning)
    )
    speed = measure_checkpoint_speed(recipe.id, model, parent, spec.name, spec.input_size, spec.mean, spec.std)
    dest_root = dest_root or models_dir()
    supersedes = superseded_records(dest_root / recipe.id)
    config = write_checkpoint_folder(
        dest_root / recipe.id,
        stored,
        build_config(model, recipe, result, metrics, speed, pruning, dense_reference, float16_head, supersedes),
        render_card,
        extra_files={GOLDEN_FILE: golden},
    )
    if dest_root.resolve() == (repo_root() / "models").resolve():  # only the repository's hub feeds the manifest
        write_manifest(dest_root)
        rerender_cards()  # the other releases' targets compare with this one
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        help="a finished run, or every seed of one recipe (released: the best held-out top-1)",
    )
    parser.add_argument("--models-dir", type=Path, help="default: the repository's models/")
    parser.add_argument(
        "--float16-head",
        action="store_true",
        help="store the classifier's weight matrix in float16 (top-1 measured on the stored model)",
    )
    args = parser.parse_args(argv)
    released = released_run(args.run_dirs)
    seed_runs = args.run_dirs if len(args.run_dirs) > 1 else None
    config = export_run(released, args.models_dir, float16_head=args.float16_head, seed_runs=seed_runs)
    meta = config["zoo"]
    spread = seed_spread(meta["metrics"].get("seeds"))
    print(f"exported {meta['id']} from {released}: top-1 {meta['metrics']['top1']:.2f}%"
          f"{f', {spread}' if spread else ''} sha256 {meta['files']['model.safetensors']['sha256'][:12]}")  # fmt: skip


if __name__ == "__main__":
    main()
