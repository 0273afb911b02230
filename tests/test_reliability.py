"""Reliability: a SIGKILLed training run resumes bit for bit, concurrent Hub loads agree, memory stays flat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import released_ids
from safetensors.torch import load_file

from zoo import registry
from zoo.registry import models_dir

REPO = Path(__file__).resolve().parent.parent
CKPT = released_ids()[0]
SRC = models_dir() / CKPT  # resolved before any fixture points the local hub elsewhere


def _env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()  # after the fixtures' monkeypatching: hf_env's HF_* variables travel with it
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra})
    return env


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ SIGKILL mid-epoch

KILL_RECIPE = {
    "id": "resnet20.killtest",
    "model": {"architecture": "resnet20"},
    "data": {"dataset": "fashion_mnist", "crop_padding": 2, "hflip": True, "limit": 1024, "test_limit": 200},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 2, "batch_size": 64, "seed": 0, "checkpoint_every": 3, "eval_batch_size": 200},
}  # 16 optimizer steps per epoch, a resumable state every 3


def _train_cmd(recipe: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "training.train", str(recipe), "--run-dir", str(run_dir)]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(KILL_RECIPE))
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    log = tmp_path / "straight.log"
    with open(log, "wb") as out:  # the reference runs alongside (one thread each, two cores)
        reference = subprocess.Popen(_train_cmd(recipe, straight), cwd=REPO, env=_env(), stdout=out,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        victim = subprocess.Popen(_train_cmd(recipe, killed), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not (killed / "state").is_dir():  # the first resumable save (after step 3 of 16)
                assert victim.poll() is None, "the run ended before writing a state"
                assert time.monotonic() < deadline, "no state/ after 60 s"
                time.sleep(0.02)
            time.sleep(0.3)  # a few more steps: killed between saves, in the middle of epoch 1
            assert len(_read_jsonl(killed / "metrics.jsonl")) < 2, "too late: the run is past its second epoch"
            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
        assert not (killed / "final.safetensors").exists()
        rerun = subprocess.run(_train_cmd(recipe, killed), cwd=REPO, env=_env(), capture_output=True, text=True,
                               timeout=120)  # fmt: skip
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
        assert reference.wait(timeout=120) == 0, log.read_text()[-4000:]

    resumed = [line for line in (rerun.stdout + rerun.stderr).splitlines() if line.startswith("resumed from")]
    assert resumed, "the rerun did not resume from the saved state"
    assert not resumed[0].endswith("batch 0"), f"not killed mid-epoch: {resumed[0]}"

    a, b = load_file(killed / "final.safetensors"), load_file(straight / "final.safetensors")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)}/{len(a)} tensors differ after kill + resume, e.g. {differing[:5]}"

    keys = ("epoch", "train_loss", "test_top1")
    history = [{k: m[k] for k in keys} for m in _read_jsonl(killed / "metrics.jsonl")]
    assert history == [{k: m[k] for k in keys} for m in _read_jsonl(straight / "metrics.jsonl")]
    assert [m["epoch"] for m in history] == [1, 2]
    for run_dir in (killed, straight):
        assert not (run_dir / "state.tmp").exists(), f"{run_dir}/state.tmp left behind"
        assert not (run_dir / "state.old").exists(), f"{run_dir}/state.old left behind"
        assert not (run_dir / "final.safetensors.tmp").exists()


# ---------------------------------------------------------------------------------- concurrent loads via the Hub

LOAD_AND_HASH = textwrap.dedent(
    """
    import hashlib, sys
    import torch
    import zoo
    model = zoo.from_pretrained(sys.argv[1]).eval()
    c, h, w = model.pretrained_cfg["input_size"]
    x = torch.linspace(-2, 2, 2 * c * h * w).reshape(2, c, h, w)
    with torch.inference_mode():
        logits = model(x).contiguous()
    print("SHA", hashlib.sha256(logits.numpy().tobytes()).hexdigest())
    """
)


def test_two_processes_load_the_same_id_through_the_hub_at_once(hf_env, tmp_path: Path) -> None:
    hf_env.hub.add_folder(registry.default_hf_hub_id(CKPT), SRC)
    empty = tmp_path / "no_models"
    empty.mkdir()
    env = _env(ZOO_MODELS_DIR=str(empty))
    assert env["HF_ENDPOINT"] == hf_env.endpoint and env["HF_HUB_CACHE"] == str(hf_env.cache_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_AND_HASH, CKPT],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
    shas = [next(line for line in out.splitlines() if line.startswith("SHA")) for out, _ in outputs]
    assert shas[0] == shas[1], shas
    downloads = [r for r in hf_env.hub.requests if r[0] == "GET" and r[1].endswith("/model.safetensors")]
    assert 1 <= len(downloads) <= 2, downloads
    blobs = [p for p in hf_env.cache_dir.rglob("blobs/*") if p.is_file()]
    assert not [p for p in hf_env.cache_dir.rglob("*.incomplete")], "a partial download was left in the cache"
    assert registry.load_manifest()[CKPT]["sha256"] in {p.name for p in blobs}


# ------------------------------------------------------------------------------------------ memory stays flat

MEMORY_LOOP = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    import zoo
    from zoo.evaluate import predict_logits
    model = zoo.to_inference(zoo.from_pretrained(sys.argv[1]))
    cfg = model.pretrained_cfg
    c, h, w = cfg["input_size"]
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(16, c, h, w, generator=gen)
    images = torch.randint(0, 256, (256, c, h, w), dtype=torch.uint8, generator=gen)
    peaks = {}
    with torch.inference_mode():
        for i in range(1, 301):
            model(batch)
            if i <= 20:
                predict_logits(model, images, cfg["mean"], cfg["std"], batch_size=64)
            if i in (50, 300):
                peaks[i] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print("PEAKS", json.dumps(peaks))
    """
)


@pytest.mark.slow
def test_inference_memory_does_not_grow() -> None:
    bnn = next(i for i in released_ids() if i.split(".")[0].endswith("_bnn"))
    run = subprocess.run([sys.executable, "-c", MEMORY_LOOP, bnn], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    peaks = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("PEAKS"))[len("PEAKS") :])
    growth_mb = (peaks["300"] - peaks["50"]) / 1024
    assert growth_mb < 30, f"peak RSS grew by {growth_mb:.1f} MB between iterations 50 and 300 ({peaks})"


LOAD_LOOP = textwrap.dedent(
    """
    import gc, json, os, sys
    import torch
    from zoo.bench import bench_checkpoint
    from zoo.evaluate import evaluate_checkpoint
    torch.set_num_threads(1)
    resident, top1 = {}, {}
    for i in range(1, 7):
        limit = None if i == 1 else 2000
        top1[i] = evaluate_checkpoint(sys.argv[1], None, limit, progress=False, packed=True)["top1"]
        bench_checkpoint(sys.argv[1], batches=(1, 16), repeats=3)
        if i in (2, 6):
            gc.collect()
            # resident KiB between rounds: the peak (ru_maxrss) moved 19-157 MB by how one round's transients overlap
            resident[i] = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    print("RESIDENT", json.dumps(resident), "TOP1", json.dumps(top1))
    """
)


@pytest.mark.slow
def test_packed_eval_and_bench_repeated_in_one_process_do_not_grow() -> None:
    """`zoo eval --packed` and `zoo bench <id>`, six times each in one process: the first eval on the full test split
    (the recorded top-1), the next five on its first 2,000 images (one top-1 for all five)."""
    bnn = next(i for i in released_ids() if i.split(".")[0].endswith("_bnn") and i.endswith(".fmnist"))
    run = subprocess.run([sys.executable, "-c", LOAD_LOOP, bnn], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=1800)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESIDENT"))
    resident_text, top1_text = line[len("RESIDENT") :].split("TOP1")
    resident, top1 = json.loads(resident_text), json.loads(top1_text)
    assert top1["1"] == registry.load_manifest()[bnn]["metrics"]["top1"], "the packed kernels changed the accuracy"
    later = {top1[str(i)] for i in range(2, 7)}
    assert len(later) == 1, f"the same images gave different top-1s in rounds 2-6: {top1}"
    growth_mb = (resident["6"] - resident["2"]) / 1024
    assert growth_mb < 30, f"resident memory grew by {growth_mb:.1f} MB between rounds 2 and 6 ({resident})"


# ------------------------------------------------------------------------------------------ killed export

EXPORT_LOOP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from zoo.checkpoint import write_checkpoint_folder
    dest = Path(sys.argv[1])
    for i in range(10_000):
        weights = {"w": torch.full((1_000_000,), float(i))}
        write_checkpoint_folder(dest, weights, {"zoo": {"round": i}}, lambda config: "card")
        print(i, flush=True)
    """
)


def _complete(folder: Path) -> bool:
    from zoo.hub import file_sha256

    config = json.loads((folder / "config.json").read_text())
    record = config["zoo"]["files"]["model.safetensors"]
    return file_sha256(folder / "model.safetensors") == record["sha256"] and (folder / "README.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.2, 0.35, 0.6, 0.9])
def test_export_killed_at_any_moment_leaves_a_whole_folder_or_a_recoverable_one(tmp_path: Path, delay: float) -> None:
    from zoo.checkpoint import recover_interrupted_write

    dest = tmp_path / "models" / "tiny.fmnist"
    proc = subprocess.Popen([sys.executable, "-c", EXPORT_LOOP, str(dest)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "0"  # one complete folder exists before the kill
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    old = dest.with_name(f".{dest.name}.old")
    assert (dest.is_dir() and _complete(dest)) or (not dest.exists() and old.is_dir() and _complete(old))
    recover_interrupted_write(dest)
    assert _complete(dest)
    assert [p.name for p in dest.parent.iterdir()] == [dest.name], "temporary folders were left behind"
