"""The ``zoo`` command, run in-process through ``zoo.cli.main`` (and once through the installed entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoo
from zoo.bench import AVX2_CAPS, ISA_CAP_ENV, PACKED_AVX2, PARENT_INT8, interleaved_burst_ms, isa_cap_environment
from zoo.cli import main
from zoo.data import dataset_spec, load_dataset, to_tensors
from zoo.data.augment import normalize
from zoo.int8 import quantize_int8_fx, quantized_engine, x86_engine
from zoo.kernels import kernel_backend
from zoo.registry import load_manifest

RELEASED = zoo.list_checkpoints()
#: The binary releases' whole-split top-1 is checked with their other forms in test_inference (one pass for all).
FLOAT_RELEASES = [i for i in RELEASED if i.split(".")[0] not in zoo.list_architectures(binary_only=True)]
ZOO_EXE = Path(sys.executable).parent / "zoo"


def run_cli(capsys, *argv: str) -> str:
    capsys.readouterr()  # drop anything printed before
    main(list(argv))
    return capsys.readouterr().out


def test_released_ids_come_from_the_manifest():
    assert sorted(load_manifest()) == RELEASED
    assert RELEASED, "zoo/_manifest.json lists no released checkpoint"


def test_bench_data_json(capsys):
    result = json.loads(run_cli(capsys, "bench", "data", "--json", "--batches", "20"))
    assert result["dataset"] == "fashion_mnist"
    assert result["batch_size"] == 128
    assert result["images"] >= 20 * 128
    assert result["seconds"] > 0
    assert result["images_per_s"] > 0  # speed itself is the benchmark's business, not a test's
    assert result["threads"] >= 1


def test_list_table(capsys):
    out = run_cli(capsys, "list")
    lines = out.splitlines()
    assert lines[0].split()[0] == "id"
    assert set(lines[1]) <= {"-", " "}
    listed = [line.split()[0] for line in lines[2:]]
    assert listed == RELEASED


def test_list_json(capsys):
    manifest = json.loads(run_cli(capsys, "list", "--json"))
    assert sorted(manifest) == RELEASED
    for cid, entry in manifest.items():
        assert entry["id"] == cid
        assert len(entry["sha256"]) == 64


@pytest.mark.parametrize("checkpoint_id", RELEASED)
def test_info(capsys, checkpoint_id):
    entry = load_manifest()[checkpoint_id]
    out = run_cli(capsys, "info", checkpoint_id)
    assert out.splitlines()[0].startswith(f"{checkpoint_id}  ({entry['architecture']}, method ")
    assert entry["sha256"] in out
    assert f"{entry['metrics']['top1']:.2f}" in out
    assert json.loads(run_cli(capsys, "info", checkpoint_id, "--json")) == entry


@pytest.mark.parametrize("checkpoint_id", RELEASED)
def test_eval_limit_json(capsys, checkpoint_id):
    result = json.loads(run_cli(capsys, "eval", checkpoint_id, "--limit", "200", "--json"))
    assert result["id"] == checkpoint_id
    assert result["dataset"] == load_manifest()[checkpoint_id]["metrics"]["dataset"]
    assert result["split"] == "test"
    assert result["num_samples"] == 200
    assert 0 <= result["top1"] <= 100
    assert result["top1"] <= result["top5"] <= 100


def test_info_unknown_id_is_a_clean_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["info", "no_such.model"])
    message = info.value.code
    assert isinstance(message, str), "a ZooError must become a message, not a traceback or a bare status"
    assert message.startswith("zoo: error:")
    assert "no_such.model" in message
    assert "zoo list" in message or any(cid in message for cid in RELEASED)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("typo", ["resnet20.fmnst", "resnt20.fmnist"])
def test_info_near_miss_suggests_the_released_id(typo):
    if "resnet20.fmnist" not in RELEASED:
        pytest.skip("resnet20.fmnist is not released")
    with pytest.raises(SystemExit) as info:
        main(["info", typo])
    assert info.value.code.startswith("zoo: error:")
    assert "resnet20.fmnist" in info.value.code


def test_eval_unknown_id_is_a_clean_error():
    with pytest.raises(SystemExit) as info:
        main(["eval", "no_such.model", "--limit", "10", "--json"])
    assert isinstance(info.value.code, str) and info.value.code.startswith("zoo: error:")


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["info"], ["bench"], ["frobnicate"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    assert "usage: zoo" in capsys.readouterr().err


def test_entry_point_reports_errors_on_stderr():
    proc = subprocess.run([str(ZOO_EXE), "info", "no_such.model"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("zoo: error:")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_id", FLOAT_RELEASES)
def test_eval_on_the_full_test_split_reproduces_the_recorded_top1(checkpoint_id, capsys):
    main(["eval", checkpoint_id, "--json"])
    result = json.loads(capsys.readouterr().out)
    entry = load_manifest()[checkpoint_id]
    split_size = len(load_dataset(entry["metrics"]["dataset"], "test"))  # the whole test split
    assert result["num_samples"] == entry["metrics"]["num_samples"] == split_size
    assert result["top1"] == pytest.approx(entry["metrics"]["top1"], abs=0.011)  # at most one image differs


def test_bench_kernels_json_reports_side_by_side_rows(capsys):
    main(["bench", "kernels", "--layers-only", "--batch", "1", "--repeats", "2", "--threads", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["threads"] == 1 and result["kernel_backend"]
    assert result["isa_cap"] is None
    assert ("cuda" in result) == torch.cuda.is_available()
    assert {r["name"] for r in result["rows"]} >= {"resnet18 stage1 56x56x64", "resnet20 28x28x16"}
    for row in result["rows"]:
        assert row["ms"] > 0  # speedups are rounded to 2 decimals (up to 0.005 off)
        assert row["speedup"] == pytest.approx(row["baseline_ms"] / row["ms"], rel=0.01, abs=0.006)
        assert row["first_call_speedup"] == pytest.approx(
            row["baseline_first_call_ms"] / row["first_call_ms"], rel=0.01, abs=0.006
        )
    scaling = result["thread_scaling"]
    assert scaling["probe"] and scaling.keys() == {"probe", "start", "end"}
    for probe in (scaling["start"], scaling["end"]):  # one thread against one thread
        assert probe["speedup"] == pytest.approx(probe["one_thread_ms"] / probe["threads_ms"], rel=0.01, abs=0.006)
    sizes = result["checkpoint_size"]
    for arch, fp32 in sizes["packed"].items():
        assert 0 < sizes["packed_float16_head"][arch]["bytes"] < fp32["bytes"]
        assert fp32["times_smaller"] == pytest.approx(sizes["torchvision resnet18 fp32 bytes"] / fp32["bytes"], 0.01)


def test_thread_scaling_times_both_thread_counts_and_restores_the_callers():
    from zoo.bench import thread_scaling

    before = torch.get_num_threads()
    try:
        probe = thread_scaling(2, rounds=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert probe["one_thread_ms"] > 0 and probe["threads_ms"] > 0
    assert probe["speedup"] == pytest.approx(probe["one_thread_ms"] / probe["threads_ms"], rel=0.01, abs=0.006)


def test_bench_kernels_isa_avx2_reruns_itself_in_a_process_held_to_avx2(monkeypatch):
    """The caps act when ATen, oneDNN and FBGEMM start, so the command re-runs in a fresh process that has them."""
    monkeypatch.delenv(ISA_CAP_ENV, raising=False)
    seen = {}

    def fake_run(cmd, env):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    argv = ["bench", "kernels", "--isa", "avx2", "--layers-only", "--json"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 3  # the child's status is the command's
    assert seen["cmd"] == [sys.executable, "-m", "zoo.cli", *argv]
    assert {k: seen["env"][k] for k in AVX2_CAPS} == AVX2_CAPS and seen["env"][ISA_CAP_ENV] == "avx2"
    with pytest.raises(ValueError, match="--isa takes avx2"):
        isa_cap_environment("avx512")


def test_bench_kernels_table_adds_the_gpu_rows_when_there_is_a_gpu(capsys, monkeypatch):
    """Printing only (the GPU rows themselves are measured by a GPU test in test_cuda_kernel.py)."""
    import zoo.bench

    row = {"name": "resnet18 stage2 28x28x128", "batch": 256, "ms": 0.05, "baseline": "cuDNN fp16 channels_last",
           "baseline_ms": 0.1, "speedup": 2.0}  # fmt: skip
    sizes = {"torchvision resnet18 fp32 bytes": 46_000_000, "packed": {}, "packed_float16_head": {}}
    gpu = {"device": "NVIDIA H200", "torch_cuda": "12.8", "timing": "synchronized", "rows": [row]}
    result = {"cpu": "CPU", "cpu_flags": ["avx2"], "threads": 1, "kernel_backend": "avx2", "torch": "x",
              "rows": [{**row, "baseline": "F.conv2d fp32", "speedup": 3.0}], "timing": "medians",
              "checkpoint_size": sizes, "cuda": gpu, "thread_scaling": {"probe": "conv", "start": {"speedup": 1.9},
              "end": {"speedup": 1.0}}}  # fmt: skip
    monkeypatch.setattr(zoo.bench, "bench_kernels", lambda *a, **k: result)
    out = run_cli(capsys, "bench", "kernels")
    assert "thread scaling (conv, 1 threads vs 1): 1.9x at the start, 1.0x at the end" in out
    gpu_part = out.split("NVIDIA H200 (CUDA 12.8)")[1]
    assert "cuDNN fp16 channels_last" in gpu_part and "2.0x" in gpu_part and "3.0x" in out.split("NVIDIA")[0]
    result["cuda"] = {"device": "Old GPU", "torch_cuda": "12.8", "skipped": "no CUDA binary kernel on this GPU: sm_75"}
    assert "Old GPU (CUDA 12.8): no CUDA binary kernel on this GPU: sm_75" in run_cli(capsys, "bench", "kernels")


def test_burst_timing_separates_a_turns_first_call_from_the_steady_ones():
    """A candidate that is slow only right after another one ran (its caches refilled) shows that in its first-call
    time and not in its steady time; every candidate runs the same number of calls."""
    calls: list[str] = []

    def candidate(name: str, cold_s: float):
        def run() -> None:
            if calls and calls[-1] != name:
                time.sleep(cold_s)
            calls.append(name)

        return run

    times = interleaved_burst_ms({"a": candidate("a", 0.02), "b": candidate("b", 0.0)}, rounds=4, burst=3)
    assert times["a"][1] >= 20 > times["a"][0] and times["b"][1] < 20
    assert calls.count("a") == calls.count("b") == 1 + 4 * 3
    assert calls[2:8] == ["a"] * 3 + ["b"] * 3  # after one warm-up call each, turns of 3
    with pytest.raises(ValueError, match="burst must be >= 2"):
        interleaved_burst_ms({"a": candidate("a", 0.0)}, rounds=1, burst=1)


def test_bench_checkpoint_measures_the_packed_model_beside_its_dense_parent(capsys):
    binary = next(i for i in zoo.list_checkpoints() if load_manifest()[i]["compression"]["weight_bits"] == 1)
    main(["bench", binary, "--batch", "1", "--repeats", "3", "--threads", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    names = list(result["results"])
    assert any("packed" in n for n in names) and any("fake-quant" in n for n in names)
    assert {"dense parent (fp32)", PARENT_INT8} <= set(names) and result["threads"] == 1 and result["peak_rss_mb"] > 0
    assert all(r["ms"] > 0 and r["images_per_s"] > 0 for runs in result["results"].values() for r in runs)
    assert "calibrated on the first 256" in result["notes"][PARENT_INT8]
    assert (f"{binary} ({PACKED_AVX2})" in names) == kernel_backend().startswith("avx512")


def test_the_int8_parent_is_a_quantized_model_that_agrees_with_the_float_one():
    parent = zoo.from_pretrained("resnet20.fmnist").eval()
    spec = dataset_spec("fashion_mnist")
    images, _ = to_tensors(load_dataset("fashion_mnist", "test"), spec, limit=64)
    x = normalize(images, spec.mean, spec.std)
    engine = x86_engine()
    int8 = quantize_int8_fx(parent, x[:32], engine)
    assert any("quantized" in type(m).__module__ for m in int8.modules())
    with torch.no_grad(), quantized_engine(engine):
        agree = (int8(x).argmax(1) == parent(x).argmax(1)).float().mean()
    assert agree >= 0.9  # int8 rounding flips a few close calls, not the model


def test_quantizing_to_int8_keeps_no_model_alive_after_the_caller_drops_it():
    import gc

    def live_tensors() -> int:
        gc.collect()
        return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())

    parent, calibration = zoo.from_pretrained("resnet20.fmnist").eval(), torch.randn(4, 1, 28, 28)
    quantize_int8_fx(parent, calibration, x86_engine())
    before = live_tensors()
    quantize_int8_fx(parent, calibration, x86_engine())
    assert live_tensors() == before, "a cache holds the models quantized before: repeated benches grow"


def _copy_checkpoints(tmp_path: Path, *ids: str) -> Path:
    import shutil

    from zoo.registry import models_dir

    for checkpoint_id in ids:
        shutil.copytree(models_dir() / checkpoint_id, tmp_path / checkpoint_id)
    return tmp_path


def test_bench_record_rewrites_the_speed_block_and_card_only(capsys, tmp_path, monkeypatch):
    from zoo.cards import render_card

    folder = _copy_checkpoints(tmp_path, "resnet20_bnn.fmnist", "resnet20.fmnist") / "resnet20_bnn.fmnist"
    monkeypatch.setenv("ZOO_MODELS_DIR", str(tmp_path))
    before = json.loads((folder / "config.json").read_text())
    weights = (folder / "model.safetensors").read_bytes()
    main(["bench", "resnet20_bnn.fmnist", "--batch", "1", "64", "--repeats", "2", "--threads", "1", "--record"])
    assert "recorded in models/resnet20_bnn.fmnist" in capsys.readouterr().err
    after = json.loads((folder / "config.json").read_text())
    speed = after["zoo"].pop("speed")
    before["zoo"].pop("speed")
    assert after == before and (folder / "model.safetensors").read_bytes() == weights
    assert speed["threads"] == 1 and speed["remeasured"]["date"] == time.strftime("%Y-%m-%d")
    assert {r["batch"] for runs in speed["results"].values() for r in runs} == {1, 64}
    card = (folder / "README.md").read_text()
    assert card == render_card(json.loads((folder / "config.json").read_text()))
    assert f"Measured again on {speed['remeasured']['date']}" in card
    assert f"| {PARENT_INT8} | 64 |" in card and f"- {PARENT_INT8}: FX graph-mode" in card
    assert not list(folder.glob(".*.tmp"))


def test_bench_record_refuses_what_a_card_cannot_hold_and_writes_nothing(tmp_path, monkeypatch):
    from zoo.cards import render_card
    from zoo.checkpoint import update_checkpoint_config

    folder = _copy_checkpoints(tmp_path, "resnet20_bnn.fmnist", "resnet20.fmnist") / "resnet20_bnn.fmnist"
    monkeypatch.setenv("ZOO_MODELS_DIR", str(tmp_path))
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="needs batches 1 and 64"):
        main(["bench", "resnet20_bnn.fmnist", "--batch", "1", "--repeats", "2", "--threads", "1", "--record"])
    with pytest.raises(KeyError):  # a speed block without results cannot be rendered: neither file is touched
        update_checkpoint_config(folder, lambda config: config["zoo"]["speed"].pop("results"), render_card)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == files
    with pytest.raises(SystemExit, match="has none to store"):
        main(["bench", "kernels", "--record"])
    monkeypatch.setenv("ZOO_MODELS_DIR", str(tmp_path / "empty"))
    with pytest.raises(zoo.errors.WeightsNotFoundError, match="does not exist"):
        from zoo.bench import record_checkpoint_speed

        record_checkpoint_speed({"id": "resnet20_bnn.fmnist", "results": {"m": [{"batch": 1}, {"batch": 64}]}})
