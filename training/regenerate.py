"""Regenerate released checkpoints: ``python -m training.regenerate [id ...]`` trains and exports each recipe.

Without ids it regenerates every recipe in ``training/recipes/`` (one per released checkpoint), parents before
the checkpoints that need them (dense parents sort first by name: ``resnet56.fmnist`` before
``resnet56_l1.fmnist``; fine-tunes need their source). Pruning recipes run their prune stage first. Runs resume
from ``runs/<id>/state`` if interrupted; a finished run (``runs/<id>/result.json``) is only exported. A recipe with
``train.seeds`` trains each seed into ``runs/<id>-s<seed>`` and exports the best on held-out images with the spread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.export import export_run
from training.finetune import train_finetune
from training.park import restore_parked
from training.recipe import Recipe
from training.seeds import recipe_run_dir, released_run, seed_recipes
from training.train import train_recipe

RECIPES_DIR = Path(__file__).with_name("recipes")


def release_recipes() -> dict[str, Path]:
    """Recipe path per checkpoint id, for the recipes named ``<id>.yaml``."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ids", nargs="*", help="checkpoint ids (default: all release recipes)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    recipes = release_recipes()
    unknown = sorted(set(args.ids) - set(recipes))
    if unknown:
        parser.error(f"no recipe for {unknown}; known: {sorted(recipes)}")
    for checkpoint_id in args.ids or list(recipes):
        recipe = Recipe.load(recipes[checkpoint_id])
        if recipe.model.pretrained:  # a fine-tune: also its from-scratch twin, whose accuracy its card shows
            train_finetune(recipes[checkpoint_id], args.runs_dir)
        else:
            run_dirs = []
            for seed_recipe in seed_recipes(recipe):
                run_dirs.append(recipe_run_dir(seed_recipe, args.runs_dir))
                restore_parked(run_dirs[-1])  # a run another machine finished or left half-way (training/parked/)
                if not (run_dirs[-1] / "result.json").exists():
                    train_recipe(seed_recipe, run_dirs[-1])
            export_run(released_run(run_dirs), seed_runs=run_dirs if recipe.train.seeds else None)
        print(f"regenerated models/{checkpoint_id}")


if __name__ == "__main__":
    main()
