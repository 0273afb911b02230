"""Runs park themselves while they train (``training.park.parked_while_training``, ``regenerate --park-every``)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from training.park import park, parked_while_training, restore_parked


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "unrelated.txt").write_text("work in progress")  # must stay out of the parking commits
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train_epoch(run_dir: Path, epoch: int) -> None:
    (run_dir / "state").mkdir(parents=True, exist_ok=True)
    (run_dir / "state" / "model.safetensors").write_bytes(bytes([epoch]) * 64)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "val_top1": 50.0 + epoch}) + "\n")


def test_a_training_run_is_parked_and_committed_every_few_minutes_and_at_its_end(repo: Path) -> None:
    run_dir, parked_root = repo / "runs" / "tiny-s0", repo / "training" / "parked"
    with parked_while_training(run_dir, minutes=0.1 / 60, commit=True, parked_root=parked_root):
        time.sleep(0.25)  # nothing to park yet: no error, no commit
        for epoch in (1, 2):
            _train_epoch(run_dir, epoch)
            time.sleep(0.35)
        (run_dir / "final.safetensors").write_bytes(b"weights")
        (run_dir / "result.json").write_text(
            json.dumps({"metrics": {"top1": 91.5}, "history": [{"epoch": 2, "val_top1": 92.0}]})
        )
    messages = _git(repo, "log", "--format=%s").splitlines()
    assert messages[0] == "Park the finished tiny-s0 run: test 91.5%, held-out 92.0%"
    assert "Re-park tiny-s0 at its latest resumable state (2 epochs done)" in messages
    assert "Re-park tiny-s0 at its latest resumable state (1 epochs done)" in messages
    assert len(messages) == len(set(messages))  # an unchanged parked copy is not committed again
    assert _git(repo, "ls-files").split() == [
        "training/parked/tiny-s0/final.safetensors",
        "training/parked/tiny-s0/metrics.jsonl",
        "training/parked/tiny-s0/result.json",
    ]
    assert "?? unrelated.txt" in _git(repo, "status", "--short")


def test_a_state_over_the_limit_is_reported_once_and_training_goes_on(repo: Path, capsys, monkeypatch) -> None:
    import functools

    from training import park

    monkeypatch.setattr(park, "park", functools.partial(park.park, max_bytes=16))
    run_dir = repo / "runs" / "big"
    _train_epoch(run_dir, 1)
    with parked_while_training(run_dir, minutes=0.05 / 60, parked_root=repo / "parked"):
        time.sleep(0.3)
    assert capsys.readouterr().out.count("not parking:") == 1 and not (repo / "parked" / "big").exists()


def test_finished_weights_park_under_their_own_larger_limit(tmp_path: Path, monkeypatch) -> None:
    from training import park as parking

    monkeypatch.setattr(parking, "MAX_PARKED_BYTES", 100)
    monkeypatch.setattr(parking, "MAX_FINISHED_BYTES", 1000)
    run_dir = tmp_path / "runs" / "resnet18-s0"
    (run_dir / "state").mkdir(parents=True)
    (run_dir / "state" / "model.safetensors").write_bytes(bytes(500))
    with pytest.raises(ValueError, match="resumable state is over"):
        park(run_dir, tmp_path / "parked")
    (run_dir / "final.safetensors").write_bytes(bytes(500))
    (run_dir / "result.json").write_text("{}")
    assert (park(run_dir, tmp_path / "parked") / "final.safetensors").stat().st_size == 500
    (run_dir / "final.safetensors").write_bytes(bytes(2000))
    with pytest.raises(ValueError, match="finished weights is over"):
        park(run_dir, tmp_path / "parked")
    assert (tmp_path / "parked" / "resnet18-s0" / "final.safetensors").stat().st_size == 500  # the old copy stays


def test_a_run_still_in_its_prune_search_parks_its_cache_and_resumes_from_it(tmp_path: Path) -> None:
    run_dir, parked_root = tmp_path / "machine1" / "pruned-s2", tmp_path / "parked"
    (run_dir / "prune").mkdir(parents=True)
    (run_dir / "prune" / "fitness.json").write_text('{"candidate": 85.6}')  # the search's evaluations so far
    assert sorted(p.name for p in park(run_dir, parked_root).rglob("*")) == ["fitness.json", "prune"]
    fresh = tmp_path / "machine2" / "pruned-s2"
    assert restore_parked(fresh, parked_root)
    assert (fresh / "prune" / "fitness.json").read_text() == '{"candidate": 85.6}'
    (fresh / "prune" / "fitness.json").write_text('{"candidate": 85.6, "next": 84.9}')
    assert not restore_parked(fresh, parked_root)  # its own, newer cache is kept
    with pytest.raises(FileNotFoundError, match="no state/ to park"):
        park(tmp_path / "machine1" / "untrained", parked_root)


def test_a_commit_that_git_refuses_is_reported_and_retried_at_the_next_parking(repo: Path, capsys) -> None:
    run_dir, lock = repo / "runs" / "tiny-s0", repo / ".git" / "index.lock"
    _train_epoch(run_dir, 1)
    lock.write_text("")  # another git command is running
    with parked_while_training(run_dir, minutes=0.1 / 60, commit=True, parked_root=repo / "parked"):
        time.sleep(0.25)
        lock.unlink()
        time.sleep(0.3)
    assert "could not commit it" in capsys.readouterr().out
    assert _git(repo, "log", "--format=%s").splitlines() == [
        "Re-park tiny-s0 at its latest resumable state (1 epochs done)"
    ]


def test_regenerate_refuses_commit_without_park_every(capsys) -> None:
    from training import regenerate

    with pytest.raises(SystemExit):
        regenerate.main(["--commit"])
    assert "give --park-every MINUTES too" in capsys.readouterr().err


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_prune_stage_is_parked_as_what_its_resume_reads(tmp_path: Path) -> None:
    run_dir, parked_root = tmp_path / "runs" / "pruned-s0", tmp_path / "parked"
    _train_epoch(run_dir, 1)
    stage = run_dir / "prune"
    for name in ("step1/start.safetensors", "step1/final.safetensors", "step1/result.json", "step1/state/model.bin",
                 "step2/start.safetensors", "step2/state/model.bin", "fitness.json"):  # fmt: skip
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        (stage / name).write_bytes(b"x" * 64)
    unfinished_step = [
        "metrics.jsonl",
        "prune/fitness.json",
        "prune/step1/final.safetensors",  # a finished recovery step: its weights and record, not its state or input
        "prune/step1/result.json",
        "prune/step2/start.safetensors",  # the step still training: all of it
        "prune/step2/state/model.bin",
        "state/model.safetensors",
    ]
    assert _files(park(run_dir, parked_root)) == unfinished_step
    (stage / "pruned.safetensors").write_bytes(b"w" * 64)
    (stage / "plan.json").write_text("{}")
    finished_stage = ["metrics.jsonl", "prune/plan.json", "prune/pruned.safetensors", "state/model.safetensors"]
    assert _files(park(run_dir, parked_root)) == finished_stage
    fresh = tmp_path / "fresh" / "pruned-s0"
    assert restore_parked(fresh, parked_root)
    assert _files(fresh) == finished_stage


def test_regenerate_parks_a_run_that_finished_here_unparked(repo: Path, monkeypatch) -> None:
    from training import regenerate

    parked_root = repo / "training" / "parked"
    monkeypatch.setattr(regenerate, "PARKED_DIR", parked_root)
    run_dir = Path("runs") / "parent-s0"
    _train_epoch(run_dir, 1)
    (run_dir / "final.safetensors").write_bytes(b"weights")
    (run_dir / "result.json").write_text(json.dumps({"metrics": {"top1": 90.0}, "history": []}))
    regenerate.ensure_finished(run_dir, regenerate.Parking(15, commit=False))
    assert not parked_root.exists()  # parking without commits is left to the caller
    for _ in range(2):  # the second call finds it parked: no new commit
        regenerate.ensure_finished(run_dir, regenerate.Parking(15, commit=True))
    messages = _git(repo, "log", "--format=%s").splitlines()
    assert messages == ["Park the finished parent-s0 run: test 90.0%, held-out None%"]
    assert (parked_root / "parent-s0" / "final.safetensors").read_bytes() == b"weights"
