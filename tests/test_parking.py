"""Runs park themselves while they train (``training.park.parked_while_training``, ``regenerate --park-every``)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from training.park import parked_while_training


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
