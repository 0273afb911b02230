"""Train one recipe: ``python -m training.train training/recipes/<id>.yaml [--run-dir runs/<id>]``.

A recipe with a ``prune`` section first runs its prune/search stage (``training/prune.py``), then trains the
pruned network. Data-parallel: ``torchrun --nproc_per_node 2 -m training.train <recipe>`` (CPU, gloo) or
``accelerate launch --multi_gpu -m training.train <recipe>`` (GPUs). Re-running resumes from ``state/``, or on a
fresh clone from the copy ``python -m training.park`` committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.park import restore_parked
from training.prune import resolve_pruned_recipe
from training.recipe import Recipe
from training.seeds import recipe_run_dir
from training.trainer import Trainer
from zoo.allocator import retain_freed_memory


def train_recipe(recipe: Recipe, run_dir: Path) -> dict:
    """Train ``recipe`` into ``run_dir``, after its prune/search stage if it has one (resumable throughout).

    A ``run_dir`` without state of its own first takes a parked copy (``training/parked/<run name>``, see
    :mod:`training.park`): a fresh clone continues a run that an earlier machine parked.
    """
    if restore_parked(run_dir):
        print(f"{run_dir}: restored the parked state from training/parked/{run_dir.name}")
    if recipe.prune is not None:
        recipe = resolve_pruned_recipe(recipe, run_dir)
    return Trainer(recipe, run_dir).fit()


def main(argv: list[str] | None = None) -> None:
    retain_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--run-dir", type=Path, help="default: runs/<recipe id> (runs/<id>-s<seed> with train.seeds)")
    parser.add_argument("--seed", type=int, help="train this seed (one of a release's train.seeds)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke runs)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only (smoke runs)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set data.root=/data/cifar10 --set train.batch_size=256",
    )
    args = parser.parse_args(argv)
    recipe = Recipe.load(args.recipe, overrides=args.set)
    if args.epochs is not None:
        recipe.train.epochs = args.epochs
    if args.limit is not None:
        recipe.data.limit = args.limit
    if args.seed is not None:
        recipe.train.seed = args.seed
    train_recipe(recipe, args.run_dir or recipe_run_dir(recipe, Path("runs")))


if __name__ == "__main__":
    main()
