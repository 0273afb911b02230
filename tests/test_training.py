"""The Accelerate trainer end to end on tiny Fashion-MNIST runs: outputs, bit-exact resume, export, data parallel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml
from safetensors.torch import load_file

import zoo
from training.export import GOLDEN_FILE, GOLDEN_IMAGES, export_run
from training.park import park, restore_parked
from training.recipe import Recipe
from training.trainer import Trainer, load_trained_model
from zoo.evaluate import predict_logits
from zoo.hub import file_sha256

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TORCHRUN = VENV_BIN / "torchrun"


def tiny_recipe(epochs: int, schedule: str = "constant", **train: Any) -> dict[str, Any]:
    """A ResNet-20 recipe on the first 512 training images: 8 optimizer steps per epoch.

    The default schedule is ``constant`` on purpose: the cosine/onecycle factor depends on the total number
    of steps (``epochs * len(loader)``), so an epochs=1 run later extended to epochs=2 follows a different
    learning-rate curve in its first epoch than a straight epochs=2 run, and the two cannot be bit-identical.
    """
    return {
        "id": "resnet20.tinytest",
        "model": {"architecture": "resnet20"},
        "data": {"dataset": "fashion_mnist", "crop_padding": 2, "hflip": True, "limit": 512, "test_limit": 500},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        "schedule": {"name": schedule},
        "train": {"epochs": epochs, "batch_size": 64, "seed": 0, "checkpoint_every": 3, "eval_batch_size": 250,
                  **train},
    }  # fmt: skip


def fit(raw: dict[str, Any], run_dir: Path, trainer_cls: type[Trainer] = Trainer) -> dict[str, Any]:
    return trainer_cls(Recipe.from_dict(raw), run_dir).fit()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"{len(differing)}/{len(wa)} tensors differ, e.g. {differing[:5]}"


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """A straight epochs=2 run (the reference the resume tests compare with)."""
    run_dir = tmp_path_factory.mktemp("train") / "B"
    fit(tiny_recipe(epochs=2), run_dir)
    return run_dir


def test_tiny_run_writes_outputs(straight_run):
    for name in ("final.safetensors", "result.json", "metrics.jsonl"):
        assert (straight_run / name).is_file(), name
    assert (straight_run / "state").is_dir()
    assert not (straight_run / "state.tmp").exists() and not (straight_run / "state.old").exists()
    metrics = read_jsonl(straight_run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]
    for m in metrics:
        assert 0 <= m["test_top1"] <= m["test_top5"] <= 100
    result = json.loads((straight_run / "result.json").read_text())
    assert result["history"] == metrics
    assert result["metrics"]["num_samples"] == 500
    assert result["num_processes"] == 1
    assert result["recipe"]["train"]["epochs"] == 2
    weights = load_file(straight_run / "final.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_with_a_holdout_each_epoch_is_measured_on_it_and_only_the_end_on_the_test_split(tmp_path):
    raw = tiny_recipe(epochs=1)
    raw["data"]["holdout"] = 100
    result = fit(raw, tmp_path / "val")
    (record,) = read_jsonl(tmp_path / "val" / "metrics.jsonl")
    assert "val_top1" in record and not any(k.startswith("test_") for k in record)
    assert result["metrics"]["num_samples"] == 500  # the final numbers: the test split


def test_a_holdout_is_drawn_from_the_whole_split_whatever_the_limit():
    from training.trainer import training_and_holdout

    raw = tiny_recipe(epochs=1)
    raw["data"] |= {"holdout": 300, "limit": None}
    (_, whole_y), (_, held_y) = training_and_holdout(Recipe.from_dict(raw))
    raw["data"]["limit"] = 200
    (train_x, train_y), (held_x, limited_held_y) = training_and_holdout(Recipe.from_dict(raw))
    assert len(whole_y) == 60_000 - 300 and len(train_y) == 200 and torch.equal(limited_held_y, held_y)
    assert torch.equal(train_y, whole_y[:200])  # a short run trains on the first of the same training images
    raw["data"]["holdout"] = 60_000
    with pytest.raises(ValueError, match=r"data.holdout 60000 leaves none of the 60000 training images"):
        training_and_holdout(Recipe.from_dict(raw))


@pytest.mark.parametrize("arch", ["resnet20", "resnet20_bnn"])
def test_a_bf16_mixed_precision_run_trains_and_keeps_float32_weights(tmp_path, arch):
    raw = tiny_recipe(epochs=1, mixed_precision="bf16")
    raw["model"]["architecture"] = arch
    result = fit(raw, tmp_path / arch)
    weights = load_file(tmp_path / arch / "final.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    assert result["recipe"]["train"]["mixed_precision"] == "bf16"
    assert 0.0 < result["history"][-1]["train_loss"] < 10.0  # finite: one epoch on 512 images is no accuracy check


def test_bf16_on_a_cpu_without_native_bfloat16_is_flagged(monkeypatch) -> None:
    from training.trainer import emulates_bf16

    bf16, fp32 = (Recipe.from_dict(tiny_recipe(epochs=1, mixed_precision=p)) for p in ("bf16", "fp32"))
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert emulates_bf16(bf16, cpu) is not native
        assert not emulates_bf16(fp32, cpu) and not emulates_bf16(bf16, gpu)


def test_an_unknown_mixed_precision_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"train.mixed_precision must be one of \['bf16', 'fp32'\]"):
        Recipe.from_dict(tiny_recipe(epochs=1, mixed_precision="fp16"))


@pytest.mark.slow
def test_resume_under_a_different_recipe_is_refused(tmp_path):
    # Resuming with, e.g., more epochs would silently change the schedule the saved steps followed.
    run_dir = tmp_path / "A"
    fit(tiny_recipe(epochs=1), run_dir)
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 1
    with pytest.raises(ValueError, match="different recipe"):
        fit(tiny_recipe(epochs=2), run_dir)
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 1


class _Interrupted(Exception):
    pass


def _interrupting_trainer(at_step: int) -> type[Trainer]:
    class InterruptingTrainer(Trainer):
        """Dies just before optimizer step ``at_step + 1``, as a killed job would."""

        def compute_loss(self, model, images, labels):
            if self.state.global_step == at_step:
                raise _Interrupted
            return super().compute_loss(model, images, labels)

    return InterruptingTrainer


@pytest.fixture(scope="module")
def mid_epoch_resume(tmp_path_factory) -> tuple[Path, Path]:
    """(straight run, run killed mid-epoch after a checkpoint and restarted), one cosine epoch each.

    Cosine here (unlike the extension test) so that the restored scheduler position matters.
    """
    root = tmp_path_factory.mktemp("midepoch")
    raw = tiny_recipe(epochs=1, schedule="cosine")
    fit(raw, root / "ref")
    with pytest.raises(_Interrupted):
        fit(raw, root / "resumed", _interrupting_trainer(at_step=5))  # last save: step 3 (checkpoint_every 3)
    assert (root / "resumed" / "state").is_dir() and not (root / "resumed" / "final.safetensors").exists()
    fit(raw, root / "resumed")
    return root / "ref", root / "resumed"


@pytest.mark.slow
def test_resume_mid_epoch_weights_bit_identical(mid_epoch_resume):
    ref, resumed = mid_epoch_resume
    assert_same_weights(resumed / "final.safetensors", ref / "final.safetensors")
    a, b = read_jsonl(ref / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    assert [(m["test_top1"], m["lr"]) for m in a] == [(m["test_top1"], m["lr"]) for m in b]


@pytest.mark.slow
def test_resume_mid_epoch_train_loss_covers_whole_epoch(mid_epoch_resume):
    ref, resumed = mid_epoch_resume
    a, b = read_jsonl(ref / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    assert [m["train_loss"] for m in a] == [m["train_loss"] for m in b]


@pytest.mark.slow
def test_a_parked_run_resumes_on_a_fresh_clone_bit_identically(mid_epoch_resume, tmp_path):
    ref, _ = mid_epoch_resume
    raw = tiny_recipe(epochs=1, schedule="cosine")
    first_machine, parked_root = tmp_path / "machine1" / "runs" / "tiny", tmp_path / "clone" / "parked"
    with pytest.raises(_Interrupted):
        fit(raw, first_machine, _interrupting_trainer(at_step=5))
    with pytest.raises(ValueError, match="over the"):
        park(first_machine, parked_root, max_bytes=1000)
    assert not (parked_root / "tiny").exists()  # a refused park writes nothing
    park(first_machine, parked_root)
    shutil.rmtree(first_machine.parent.parent)  # the first machine is gone
    fresh = tmp_path / "machine2" / "runs" / "tiny"
    assert restore_parked(fresh, parked_root) and not restore_parked(fresh, parked_root)  # its own state wins now
    fit(raw, fresh, _interrupting_trainer(at_step=2))  # would die at step 2 if it started over: it resumes at 3
    assert_same_weights(fresh / "final.safetensors", ref / "final.safetensors")
    park(fresh, parked_root)  # finished: its weights and result travel, for export on the next machine
    assert sorted(p.name for p in (parked_root / "tiny").iterdir()) == [
        "final.safetensors",
        "metrics.jsonl",
        "result.json",
    ]
    third = tmp_path / "machine3" / "runs" / "tiny"
    assert restore_parked(third, parked_root) and (third / "result.json").is_file()
    assert_same_weights(third / "final.safetensors", ref / "final.safetensors")


def test_export_and_load(straight_run, tmp_path):
    config = export_run(straight_run, dest_root=tmp_path / "models")
    folder = tmp_path / "models" / "resnet20.tinytest"
    for name in ("config.json", "model.safetensors", "README.md", GOLDEN_FILE):
        assert (folder / name).is_file(), name
    on_disk = json.loads((folder / "config.json").read_text())
    assert on_disk == config
    record = on_disk["zoo"]["files"]["model.safetensors"]
    assert record["sha256"] == file_sha256(folder / "model.safetensors")
    assert record["size"] == (folder / "model.safetensors").stat().st_size
    assert on_disk["zoo"]["id"] == "resnet20.tinytest"
    assert on_disk["zoo"]["metrics"]["num_samples"] == 10000  # export evaluates the full test split
    assert_same_weights(folder / "model.safetensors", straight_run / "final.safetensors")
    assert not list((tmp_path / "models").glob(".*")), "temporary export folders left behind"

    model = zoo.from_pretrained(f"local-dir:{folder}")
    golden = load_file(folder / GOLDEN_FILE)
    assert golden["images"].dtype == torch.uint8 and golden["images"].shape == (GOLDEN_IMAGES, 1, 28, 28)
    cfg = model.pretrained_cfg
    logits = predict_logits(model, golden["images"], tuple(cfg["mean"]), tuple(cfg["std"]))
    torch.testing.assert_close(logits, golden["logits"], rtol=0, atol=1e-4)


def test_export_with_a_float16_head_measures_and_ships_the_stored_model(straight_run, tmp_path):
    config = export_run(straight_run, dest_root=tmp_path / "models", float16_head=True)
    folder = tmp_path / "models" / "resnet20.tinytest"
    stored = load_file(folder / "model.safetensors")
    assert [k for k, v in stored.items() if v.dtype == torch.float16] == ["fc.weight"]
    assert config["zoo"]["storage"]["classifier_weights"] == "float16"
    assert "classifier weight matrix: float16" in (folder / "README.md").read_text()
    model = zoo.from_pretrained(f"local-dir:{folder}")
    assert model.fc.weight.dtype == torch.float32
    golden = load_file(folder / GOLDEN_FILE)  # logits of the model as stored, reproduced exactly after loading
    cfg = model.pretrained_cfg
    logits = predict_logits(model, golden["images"], tuple(cfg["mean"]), tuple(cfg["std"]))
    torch.testing.assert_close(logits, golden["logits"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ data parallel


def _dp_recipe(tmp: Path) -> Path:
    raw = {
        "id": "resnet20.dptest",
        "model": {"architecture": "resnet20"},
        "data": {"dataset": "fashion_mnist", "limit": 1024, "test_limit": 200},
        "train": {"epochs": 1, "batch_size": 64, "checkpoint_every": 100000, "log_param_checksums": True},
    }
    path = tmp / "dptest.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _torchrun(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_gives_trainer_two_gloo_processes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(f"""
        import json, os
        from training.recipe import Recipe
        from training.trainer import Trainer
        acc = Trainer(Recipe.load({str(_dp_recipe(tmp_path))!r}), {str(tmp_path / "run")!r}).accelerator
        print("PROBE " + json.dumps({{"env_rank": os.environ["RANK"], "type": str(acc.distributed_type),
              "n": acc.num_processes, "rank": acc.process_index, "backend": acc.state.backend}}), flush=True)
    """)
    )
    proc = _torchrun([str(probe)], timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Two ranks share one stdout pipe, so their lines may interleave: find each record, not each line.
    seen = [json.loads(record) for record in re.findall(r"PROBE (\{[^{}]*\})", proc.stdout)]
    assert len(seen) == 2
    assert {(s["type"], s["n"], s["backend"]) for s in seen} == {("DistributedType.MULTI_CPU", 2, "gloo")}
    assert sorted(s["rank"] for s in seen) == [0, 1]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory) -> Path:
    """``torchrun --nproc_per_node 2 -m training.train`` on 1024 images, 16 steps, exactly as the README says."""
    tmp = tmp_path_factory.mktemp("dp")
    run_dir = tmp / "run"
    proc = _torchrun(["-m", "training.train", str(_dp_recipe(tmp)), "--run-dir", str(run_dir)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def _rank_logs(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    files = [run_dir / f"checksums.rank{r}.jsonl" for r in (0, 1)]
    for f in files:
        assert f.is_file(), f"{f.name} missing: {sorted(p.name for p in run_dir.iterdir())}"
    return read_jsonl(files[0]), read_jsonl(files[1])


@pytest.mark.slow
def test_data_parallel_ranks_step_together_and_learn(dp_run):
    rank0, rank1 = _rank_logs(dp_run)
    assert [r["step"] for r in rank0] == [r["step"] for r in rank1] == list(range(1, 17))  # 1024 / 64
    assert [r["loss"] for r in rank0] != [r["loss"] for r in rank1]  # each rank sees its own half-batch
    losses = [(a["loss"] + b["loss"]) / 2 for a, b in zip(rank0, rank1, strict=True)]
    quarter = len(losses) // 4
    assert sum(losses[-quarter:]) / quarter < sum(losses[:quarter]) / quarter, losses
    result = json.loads((dp_run / "result.json").read_text())
    assert result["num_processes"] == 2
    assert len(read_jsonl(dp_run / "metrics.jsonl")) == 1  # written by the main process only


@pytest.mark.slow
def test_data_parallel_replica_checksums_identical(dp_run):
    rank0, rank1 = _rank_logs(dp_run)
    assert len(rank0) == len(rank1)
    mismatched = [a["step"] for a, b in zip(rank0, rank1, strict=True) if a["checksum"] != b["checksum"]]
    assert not mismatched, f"replicas differ at steps {mismatched}"


def test_torchvision_parents_hold_torchvision_weights_in_the_zoo_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torchvision:<arch>[.<weights>]`` (the ImageNet pruning recipes' parent and teacher): torchvision's trained
    network, its weights copied into ``<arch>_dense`` (whose widths the pruning methods change). Downloads are
    replaced by a seeded random network; what is asked for and what comes out are checked."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    asked: list[tuple[str, Any]] = []

    def get_model(name: str, weights: Any = None) -> torch.nn.Module:
        asked.append((name, weights))
        return reference

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    model = load_trained_model("torchvision:resnet18.IMAGENET1K_V1")
    assert asked == [("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1)]
    assert model.pretrained_cfg["architecture"] == "resnet18_dense" and not model.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    load_trained_model("torchvision:resnet18")
    assert asked[-1] == ("resnet18", torchvision.models.ResNet18_Weights.DEFAULT)
    with pytest.raises(ValueError, match="no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        load_trained_model("torchvision:resnet18.IMAGENET1K_V9")
    with pytest.raises(ValueError, match="no 'vgg11_dense'"):
        load_trained_model("torchvision:vgg11")


@pytest.mark.slow
def test_a_run_killed_between_its_weights_and_its_result_record_finishes_on_resume(mid_epoch_resume, tmp_path):
    ref, _ = mid_epoch_resume
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    (cut / "result.json").unlink()  # the kill landed after final.safetensors was written
    with pytest.raises(FileNotFoundError, match="no finished run there"):
        load_trained_model(f"run:{cut}")
    fit(tiny_recipe(epochs=1, schedule="cosine"), cut)
    assert (
        json.loads((cut / "result.json").read_text())["metrics"]
        == json.loads((ref / "result.json").read_text())["metrics"]
    )
    assert_same_weights(cut / "final.safetensors", ref / "final.safetensors")
    assert not list(cut.glob("*.tmp"))
