"""A release trained with several seeds: which run is released, and the spread of the others.

A recipe with ``train.seeds: [0, 1, 2]`` is trained once per seed into ``runs/<id>-s<seed>``; export measures every
seed's test top-1 the same way and releases the seed with the best *held-out* top-1 at the last epoch (never one
picked on the test split). The card and ``zoo list`` then show the released seed beside the mean ± std of all.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from training.recipe import Recipe, run_identity

SELECTED_BY = "best held-out top-1 at the last epoch"


def recipe_run_dir(recipe: Recipe, runs_dir: Path) -> Path:
    """Where a recipe trains: ``<runs_dir>/<id>-s<seed>`` for a release of several seeds, else ``<runs_dir>/<id>``."""
    return runs_dir / (f"{recipe.id}-s{recipe.train.seed}" if recipe.train.seeds else recipe.id)


def with_seed(recipe: Recipe, seed: int) -> Recipe:
    """``recipe`` trained with ``seed``."""
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, seed=seed))


def seed_recipes(recipe: Recipe) -> list[Recipe]:
    """The recipe once per seed of its release (just itself without ``train.seeds``)."""
    return [with_seed(recipe, s) for s in recipe.train.seeds or [recipe.train.seed]]


def read_result(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no result.json (the run has not finished; resume it with "
                                "python -m training.train <recipe> --run-dir " + f"{run_dir})")  # fmt: skip
    return json.loads(path.read_text())


def seedless_identity(raw_recipe: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_identity` less the seed: what the seeds of one release share."""
    normal = run_identity(raw_recipe)
    del normal["train"]["seed"]
    del normal["data"]["holdout_seed"]  # compared by check_same_holdout
    return normal


def check_same_holdout(results: dict[Path, dict[str, Any]]) -> None:
    """Seeds of one release hold out the same images, or each the images drawn by its own seed (recipes without
    ``data.holdout_seed``); a mix would compare held-out accuracies measured on differently drawn images."""
    split_seeds = {d: run_identity(r["recipe"])["data"]["holdout_seed"] for d, r in results.items()}
    own_seeds = {d: r["recipe"]["train"]["seed"] for d, r in results.items()}
    if len(set(split_seeds.values())) > 1 and split_seeds != own_seeds:
        shared = min(Counter(split_seeds.values()).items(), key=lambda seed_count: (-seed_count[1], seed_count[0]))[0]
        others = [str(d) for d, s in split_seeds.items() if s != shared]
        raise ValueError(f"runs {others} hold out other training images than the rest of their release (held-out "
                         f"splits drawn by seeds {sorted(set(split_seeds.values()))}): retrain them with "
                         f"data.holdout_seed {shared}")  # fmt: skip


def _differing_sections(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check_finished_under(recipe: Recipe, run_dir: Path) -> None:
    """A finished run is reused (exported, or trained on) only if ``recipe`` trains it as it was trained: else a
    release would carry numbers its recipe did not make (e.g. a recipe that later gained ``data.holdout_seed``)."""
    recorded = read_result(run_dir).get("recipe")
    if recorded is None:
        raise ValueError(
            f"{run_dir}/result.json records no recipe, so nothing says how it was trained: retrain "
            f"it (delete {run_dir} and training/parked/{run_dir.name}, then run training.regenerate)"
        )
    trained, wanted = run_identity(recorded), run_identity(recipe.to_dict())
    if recipe.prune is not None:  # the prune stage filled in the widths and the pruned weights the run started from
        for identity in (trained, wanted):
            identity["model"].pop("args")
            identity["model"].pop("init_from")
    differing = _differing_sections(trained, wanted)
    if differing:
        raise ValueError(f"{run_dir} finished under another recipe than {recipe.id}'s of today (sections {differing} "
                         f"differ). To retrain it with today's recipe, delete {run_dir} and training/parked/"
                         f"{run_dir.name}, then run training.regenerate again; to keep it, restore the recipe it "
                         "records in its result.json.")  # fmt: skip


def check_same_recipe(results: dict[Path, dict[str, Any]]) -> None:
    """Seeds of one release differ in their seed alone; anything else makes their spread meaningless."""
    (first, reference), *others = results.items()
    base = seedless_identity(reference["recipe"])
    for run_dir, result in others:
        other = seedless_identity(result["recipe"])
        if other != base:
            differing = _differing_sections(base, other)
            raise ValueError(f"{run_dir} was not trained with {first}'s recipe (sections {differing} differ): "
                             "seeds of one release may differ in train.seed only")  # fmt: skip
    check_same_holdout(results)
    seeds = [r["recipe"]["train"]["seed"] for r in results.values()]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs {[str(p) for p in results]} repeat a seed ({seeds}): each run needs its own")


def final_held_out_top1(result: dict[str, Any], run_dir: Path) -> float:
    history = result.get("history") or []
    if not history or "val_top1" not in history[-1]:
        raise ValueError(f"{run_dir} has no held-out top-1 to choose the released seed by: train it with "
                         "data.holdout > 0")  # fmt: skip
    return history[-1]["val_top1"]


def released_run(run_dirs: list[Path]) -> Path:
    """The run to release among seeds of one recipe: the best final held-out top-1 (ties: the lowest seed)."""
    results = {d: read_result(d) for d in run_dirs}
    check_same_recipe(results)
    if len(run_dirs) == 1:
        return run_dirs[0]
    held_out = {d: final_held_out_top1(r, d) for d, r in results.items()}
    return max(run_dirs, key=lambda d: (held_out[d], -results[d]["recipe"]["train"]["seed"]))


def seed_statistics(top1_by_seed: dict[int, float], held_out_by_seed: dict[int, float], released: int) -> dict:
    """config.json's ``metrics.seeds``: per-seed test and held-out top-1, mean ± sample std of the test top-1."""
    seeds = sorted(top1_by_seed)
    top1 = [top1_by_seed[s] for s in seeds]
    return {
        "n": len(seeds),
        "seeds": seeds,
        "top1": top1,
        "held_out_top1": [held_out_by_seed[s] for s in seeds],
        "top1_mean": round(statistics.fmean(top1), 4),
        "top1_std": round(statistics.stdev(top1), 4) if len(top1) > 1 else None,
        "released_seed": released,
        "released_by": SELECTED_BY,
    }
