"""Regenerate released checkpoints: ``python -m training.regenerate [id ...]`` trains and exports each recipe.

Without ids it regenerates every recipe in ``training/recipes/`` (one per released checkpoint). The runs a recipe
starts from, prunes or distils from (``model.init_from: runs/<run>/...``, ``prune.parent: run:runs/<run>``,
``train.teacher.checkpoint: run:runs/<run>``) are trained first when they have not finished, from the recipe named
after the run (``training/recipes/<run>.yaml`` or ``training/recipes/parents/<run>.yaml``, ``<run>`` less a
``-s<seed>`` suffix, trained with that seed): e.g. a two-step BNN's step 1 and its teacher, or the dense parent's
seed 0 that the pruned ResNet-56s start from. Fine-tunes need their source. Pruning recipes run their prune stage first.
Runs resume from ``runs/<id>/state`` if interrupted (or from ``training/parked/``); a finished run
(``runs/<id>/result.json``) is only exported. A recipe with ``train.seeds`` trains each seed into
``runs/<id>-s<seed>`` and exports the best on held-out images with the spread; seeds go breadth-first (the first
seed of every id given, then each one's next seed). ``--park-every MINUTES [--commit]`` parks (and commits) each
run while it trains, for a machine that may be taken back (``training/park.py``). ``--train-only`` trains (and parks)
without exporting: for a sitting that trains some seeds of a family whose releases should change together.
"""

from __future__ import annotations

import argparse
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from training.export import export_run
from training.finetune import train_finetune
from training.park import PARKED_DIR, commit_parked, park, parked_while_training, restore_parked
from training.recipe import Recipe
from training.seeds import check_finished_under, recipe_run_dir, released_run, seed_recipes, with_seed
from training.train import train_recipe
from training.trainer import run_finished
from zoo.allocator import retain_freed_memory

RECIPES_DIR = Path(__file__).with_name("recipes")


def release_recipes() -> dict[str, Path]:
    """Recipe path per checkpoint id, for the recipes named ``<id>.yaml``."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


@dataclass(frozen=True)
class Parking:
    """How runs are parked while they train: every ``minutes`` (None: not at all), each parked copy committed?"""

    minutes: float | None = None
    commit: bool = False


def train_parked(recipe: Recipe, run_dir: Path, parking: Parking) -> None:
    """Train ``recipe`` in ``run_dir``, parking it as ``parking`` says."""
    if parking.minutes is None:
        train_recipe(recipe, run_dir)
        return
    with parked_while_training(run_dir, parking.minutes, parking.commit):
        train_recipe(recipe, run_dir)


def required_runs(recipe: Recipe) -> list[Path]:
    """The run folders ``recipe`` starts from (``model.init_from``), prunes (``prune.parent: run:runs/<run>``) or
    distils from (``train.teacher.checkpoint: run:runs/<run>``)."""
    teacher = recipe.train.teacher.checkpoint if recipe.train.teacher is not None else None
    references = [teacher, recipe.prune.parent if recipe.prune is not None else None]
    paths = [recipe.model.init_from, *(r.removeprefix("run:") for r in references if r and r.startswith("run:"))]
    runs = [Path(*Path(path).parts[:2]) for path in paths if path and Path(path).parts[:1] == ("runs",)]
    return list(dict.fromkeys(runs))


def recipe_for_run(run_dir: Path) -> Recipe | None:
    """The recipe that trains ``run_dir`` (``<id>`` or ``<id>-s<seed>``), from ``RECIPES_DIR`` or its ``parents/``."""
    match = re.fullmatch(r"(.+)-s(\d+)", run_dir.name)
    checkpoint_id, seed = (match[1], int(match[2])) if match else (run_dir.name, None)
    for folder in (RECIPES_DIR, RECIPES_DIR / "parents"):
        if (folder / f"{checkpoint_id}.yaml").is_file():
            recipe = Recipe.load(folder / f"{checkpoint_id}.yaml")
            return recipe if seed is None else with_seed(recipe, seed)
    return None


def ensure_finished(
    run_dir: Path, parking: Parking = Parking(), chain: tuple[Path, ...] = (), recipe: Recipe | None = None
) -> None:
    """Train ``run_dir`` with ``recipe`` (default: the one named after it), first what it needs, unless it has
    finished here or in ``training/parked/``."""
    restore_parked(run_dir)  # a run another machine finished or left half-way
    recipe = recipe or recipe_for_run(run_dir)
    if run_finished(run_dir):
        if recipe is not None:
            check_finished_under(recipe, run_dir)
        if parking.commit and not (PARKED_DIR / run_dir.name / "result.json").is_file():
            # finished here but never parked (a sitting cut first): later seeds on another machine need it
            commit_parked(park(run_dir, PARKED_DIR))
        return
    if run_dir in chain:
        raise ValueError(f"recipes need each other in a cycle: {' -> '.join(map(str, (*chain, run_dir)))}")
    if recipe is None:
        raise FileNotFoundError(
            f"{run_dir} is needed but has not finished, and no recipe trains it: add "
            f"{RECIPES_DIR}/parents/{run_dir.name}.yaml or train it with python -m training.train <recipe> "
            f"--run-dir {run_dir}"
        )
    for needed in required_runs(recipe):
        ensure_finished(needed, parking, (*chain, run_dir))
    train_parked(recipe, run_dir, parking)


def breadth_first_seeds(releases: list[Recipe]) -> list[Recipe]:
    """The seed recipes of ``releases`` in training order: every release's first seed, then every second seed, ...
    so that a sitting that ends early has already trained one seed of each method being compared."""
    per_release = [seed_recipes(recipe) for recipe in releases]
    return [seed for rank in itertools.zip_longest(*per_release) for seed in rank if seed is not None]


def main(argv: list[str] | None = None) -> None:
    retain_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ids", nargs="*", help="checkpoint ids (default: all release recipes)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--park-every", type=float, metavar="MINUTES", help="park each run while it trains")
    parser.add_argument("--commit", action="store_true", help="git-commit each parked copy (with --park-every)")
    parser.add_argument("--train-only", action="store_true", help="train the runs the ids need, export nothing")
    args = parser.parse_args(argv)
    if args.commit and args.park_every is None:
        parser.error("--commit commits what --park-every parks: give --park-every MINUTES too")
    parking = Parking(args.park_every, args.commit)
    recipes = release_recipes()
    unknown = sorted(set(args.ids) - set(recipes))
    if unknown:
        parser.error(f"no recipe for {unknown}; known: {sorted(recipes)}")
    releases = {checkpoint_id: Recipe.load(recipes[checkpoint_id]) for checkpoint_id in args.ids or list(recipes)}
    for seed_recipe in breadth_first_seeds([r for r in releases.values() if not r.model.pretrained]):
        ensure_finished(recipe_run_dir(seed_recipe, args.runs_dir), parking, recipe=seed_recipe)
    if args.train_only:
        return
    for checkpoint_id, recipe in releases.items():
        if recipe.model.pretrained:  # a fine-tune: also its from-scratch twin, whose accuracy its card shows
            train_finetune(recipes[checkpoint_id], args.runs_dir)
        else:
            run_dirs = [recipe_run_dir(seed_recipe, args.runs_dir) for seed_recipe in seed_recipes(recipe)]
            export_run(released_run(run_dirs), seed_runs=run_dirs if recipe.train.seeds else None)
        print(f"regenerated models/{checkpoint_id}")


if __name__ == "__main__":
    main()
