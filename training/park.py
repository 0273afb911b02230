"""Carry an unfinished training run to another machine through git: ``python -m training.park runs/<id> [...]``.

A run's resumable state lives in ``runs/<id>/`` (ignored by git: it is rewritten every few hundred steps). Parking
copies what a resume needs (``state/``, ``metrics.jsonl`` and the prune stage's ``prune/`` cache: of a finished
stage its plan and weights only, of a finished recovery step its weights and record, not its state) into
``training/parked/<id>/``, which is committed; on a fresh clone ``python -m training.train <recipe>`` (or
``training.regenerate``) finds no ``runs/<id>/state``, restores the parked copy into ``runs/<id>/`` and continues
from it, with the same numbers as a run that was never interrupted (the state holds the weights, optimizer,
schedule, data order position and random generators). Park again before each stop. A finished run parks its
``final.safetensors`` and ``result.json`` instead, so a later machine can export it (``python -m training.export``)
or use it as a ``run:`` teacher / parent; delete the parked copy once it is released.

``python -m training.regenerate <id> --park-every 15 --commit`` does this on its own while it trains: every 15
minutes and when a run ends it parks the run and commits just that parked folder (:func:`parked_while_training`), so
a machine taken back mid-run loses at most 15 minutes of it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.prune import PLAN_FILE, STAGE_DIR, WEIGHTS_FILE
from training.trainer import RESULT_FILE, STATE_DIR, latest_state

PARKED_DIR = Path(__file__).with_name("parked")
CARRIED = (STATE_DIR, "metrics.jsonl", STAGE_DIR)
FINISHED = ("final.safetensors", RESULT_FILE, "metrics.jsonl")
#: A parked run is committed: keep it to small models (a ResNet-56 state is ~7 MB, a ResNet-20's ~2 MB).
MAX_PARKED_BYTES = 32 * 2**20
#: A finished run's weights are committed once (re-parking it changes nothing), as the teacher or the initialisation
#: of runs in later sittings: room for a float ResNet-18's 45 MB, whose resumable states (85-134 MB with the
#: optimizer) stay on the machine, so a ResNet-18 run that is cut off starts over in the next sitting.
MAX_FINISHED_BYTES = 64 * 2**20


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _resume_needs(path: Path) -> list[Path]:
    """The files under ``path`` a resume reads. A finished prune stage (``plan.json``) is read as its plan and
    pruned weights alone, and a finished sub-run (AIP's recovery steps) as its weights and record: their resumable
    states and step inputs would put a pruned ResNet-56 over the size limit and are never read again."""
    if path.is_file():
        return [path]
    if (path / PLAN_FILE).is_file():
        return [path / PLAN_FILE, path / WEIGHTS_FILE]
    skipped = (STATE_DIR, "start.safetensors") if (path / RESULT_FILE).is_file() else ()
    return [f for child in sorted(path.iterdir()) if child.name not in skipped for f in _resume_needs(child)]


def park(run_dir: Path, parked_root: Path = PARKED_DIR, max_bytes: int | None = None) -> Path:
    """Copy ``run_dir``'s resumable files (or, finished, its weights and result) to ``parked_root/<run name>``,
    replaced whole, never half-written; refused over ``max_bytes`` (by default ``MAX_PARKED_BYTES`` for a resumable
    state, ``MAX_FINISHED_BYTES`` for a finished run)."""
    finished = (run_dir / RESULT_FILE).is_file()
    if max_bytes is None:
        max_bytes = MAX_FINISHED_BYTES if finished else MAX_PARKED_BYTES
    state = latest_state(run_dir)
    if state is None and not finished and not (run_dir / STAGE_DIR).is_dir():  # a prune stage resumes from its cache
        raise FileNotFoundError(f"{run_dir}: no {STATE_DIR}/ to park (train first: python -m training.train ...)")
    carried = FINISHED if finished else CARRIED  # a finished run: its weights and record, for export or as a teacher
    items = {n: (state if n == STATE_DIR else run_dir / n) for n in carried
             if (state is not None if n == STATE_DIR else (run_dir / n).exists())}  # fmt: skip
    files = {Path(name) / f.relative_to(src): f for name, src in items.items() for f in _resume_needs(src)}
    total = sum(f.stat().st_size for f in files.values())
    if total > max_bytes:
        raise ValueError(
            f"{run_dir}: {total / 2**20:.1f} MB of {'finished weights' if finished else 'resumable state'} is over "
            f"the {max_bytes / 2**20:.0f} MB that may be committed; keep its runs/ folder on a disk the next machine "
            "mounts instead (--run-dir)"
        )
    dest = parked_root / run_dir.name
    tmp, old = dest.with_name(dest.name + ".tmp"), dest.with_name(dest.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for relative, src in files.items():
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tmp / relative)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def restore_parked(run_dir: Path, parked_root: Path = PARKED_DIR) -> bool:
    """Copy a parked run into ``run_dir`` when ``run_dir`` has no state, result or prune cache of its own; True if
    it did."""
    parked = parked_root / run_dir.name
    if latest_state(run_dir) is not None or (run_dir / RESULT_FILE).is_file() or (run_dir / STAGE_DIR).is_dir():
        return False
    if not any((parked / name).exists() for name in (STATE_DIR, RESULT_FILE, STAGE_DIR)):
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(parked.iterdir()):
        target = run_dir / item.name
        if item.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)
    return True


def describe_parked(parked: Path) -> str:
    """A commit message for a parked run: its test and held-out top-1 when finished, else the epochs it has done."""
    if (parked / RESULT_FILE).is_file():
        result = json.loads((parked / RESULT_FILE).read_text())
        held_out = result["history"][-1].get("val_top1") if result.get("history") else None
        return f"Park the finished {parked.name} run: test {result['metrics']['top1']}%, held-out {held_out}%"
    lines = (parked / "metrics.jsonl").read_text().splitlines() if (parked / "metrics.jsonl").is_file() else []
    epochs = json.loads(lines[-1])["epoch"] if lines else 0
    return f"Re-park {parked.name} at its latest resumable state ({epochs} epochs done)"


def commit_parked(parked: Path) -> None:
    """``git commit`` just ``parked`` (whatever else the work tree holds stays uncommitted), if it changed."""
    subprocess.run(["git", "add", "--all", "--", str(parked)], check=True)
    if subprocess.run(["git", "diff", "--cached", "--quiet", "--", str(parked)]).returncode:
        subprocess.run(["git", "commit", "-q", "-m", describe_parked(parked), "--", str(parked)], check=True)


@contextmanager
def parked_while_training(
    run_dir: Path, minutes: float, commit: bool = False, parked_root: Path = PARKED_DIR
) -> Iterator[None]:
    """Park ``run_dir`` every ``minutes`` while the block trains it and once more as it ends (finished or not), and
    with ``commit`` commit each parked copy. A state over the size limit is reported once and not parked."""
    stop, refused = threading.Event(), []

    def park_now() -> None:
        try:
            dest = park(run_dir, parked_root)
        except (FileNotFoundError, shutil.Error):  # no state yet, or one the trainer replaced while it was copied
            return
        except ValueError as too_big:
            if not refused:
                print(f"not parking: {too_big}", flush=True)
            refused.append(too_big)
            return
        if commit:
            try:
                commit_parked(dest)
            except subprocess.CalledProcessError as failed:  # e.g. another git command holds the index lock
                print(f"parked {dest} but could not commit it ({failed}); the next parking tries again", flush=True)

    def every_few_minutes() -> None:
        while not stop.wait(minutes * 60):
            park_now()

    thread = threading.Thread(target=every_few_minutes, name=f"park {run_dir.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        park_now()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="e.g. runs/resnet20_bnn.fmnist")
    parser.add_argument("--restore", action="store_true", help="copy the parked runs back into run_dirs instead")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        if args.restore:
            done = restore_parked(run_dir)
            print(f"{run_dir}: {'restored from' if done else 'kept as it is (it has its own state, or none is in)'} "
                  f"{PARKED_DIR / run_dir.name}")  # fmt: skip
            continue
        dest = park(run_dir)
        print(f"parked {run_dir} in {dest} ({_size(dest) / 2**20:.1f} MB): commit it; `python -m training.train "
              f"<recipe> --run-dir {run_dir}` resumes from it on a fresh clone")  # fmt: skip


if __name__ == "__main__":
    main()
