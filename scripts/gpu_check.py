#!/usr/bin/env python3
"""One-shot GPU check of the CUDA binary-conv extension, sized for a ~10 minute slot on an H100/H200 (or any sm_80+).

    PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

1. builds the extension (``zoo.kernels.cuda``; sm_80 + sm_90 SASS) and records the build time;
2. runs the CUDA correctness tests (``pytest tests/test_cuda_kernel.py -m 'not slow'``);
3. benchmarks the binary conv against cuDNN fp16 channels_last (``cudnn.benchmark = True``) on the ResNet-18
   stage 2-4 3x3 convs (ImageNet sizes) at batch 1 and 256: CUDA events, median over samples, each sample timing a
   loop of calls (eager, i.e. launch overhead included) and, where capture works, a CUDA graph of the same loop
   (GPU time only). Every tile config of the tensor-core kernel is timed too, so the heuristic can be checked. The
   binary outputs are also compared with an fp32 cuDNN conv of the ±1 tensors (TF32 off) on every benchmarked shape;
4. before 3, times the whole ``resnet18_sdbnn`` and ``resnet18_bireal`` inference forms at batch 1 (eager and CUDA
   graph) beside torchvision's resnet18 in fp16 and fp32, and compares their logits with the fake-quant models'.

Prints a table and writes everything as JSON to the path given. Needs no internet and no datasets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ResNet-18 (ImageNet) 3x3 binary convs of stages 2-4: (name, input H=W, C_in, C_out, stride)
SHAPES = [
    ("s2.0.conv1", 56, 64, 128, 2),
    ("s2.conv", 28, 128, 128, 1),
    ("s3.0.conv1", 28, 128, 256, 2),
    ("s3.conv", 14, 256, 256, 1),
    ("s4.0.conv1", 14, 256, 512, 2),
    ("s4.conv", 7, 512, 512, 1),
]
BATCHES = (1, 256)

_STUB_PLUGIN = """
import sys, types
pkg = types.ModuleType("zoo")
pkg.__path__ = [{path!r}]
sys.modules["zoo"] = pkg
"""


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _import_zoo_kernels(report: dict) -> tuple[types.ModuleType, types.ModuleType, str | None]:
    """Import zoo.kernels and zoo.kernels.cuda. If the package's own __init__ fails on this machine (a missing or
    different third-party package), load the kernels through a stub ``zoo`` package and tell pytest to do the same."""
    stub_dir = None
    try:
        import zoo  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        report["zoo_import_error"] = f"{type(exc).__name__}: {exc}"
        _log(f"`import zoo` failed ({report['zoo_import_error']}); using a stub package for zoo.kernels")
        for name in [m for m in sys.modules if m == "zoo" or m.startswith("zoo.")]:
            del sys.modules[name]
        stub_dir = tempfile.mkdtemp(prefix="zoo_stub_")
        Path(stub_dir, "_zoo_stub.py").write_text(_STUB_PLUGIN.format(path=str(ROOT / "zoo")))
        sys.path.insert(0, stub_dir)
        import _zoo_stub  # noqa: F401
    import zoo.kernels as zk
    import zoo.kernels.cuda as zkc

    return zk, zkc, stub_dir


def _device_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=p.name,
            capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
        )
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30).stdout
        info["nvcc"] = out.strip().splitlines()[-1] if out else None
    except Exception as exc:
        info["nvcc"] = f"unavailable: {exc}"
    return info


def _run_tests(stub_dir: str | None, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "tests/test_cuda_kernel.py", "-m", "not slow", "-q", "-ra"]
    cmd += ["--noconftest", "-p", "no:cacheprovider"]
    env = dict(os.environ)
    if stub_dir:
        cmd += ["-p", "_zoo_stub"]
        env["PYTHONPATH"] = os.pathsep.join([stub_dir, str(ROOT), env.get("PYTHONPATH", "")])
    _log("running " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        rc = proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc = "timeout"
    print(out[-6000:], flush=True)
    summary = next((ln for ln in reversed(out.splitlines()) if " passed" in ln or " failed" in ln), "")
    return {"returncode": rc, "seconds": round(time.perf_counter() - t0, 1), "summary": summary, "tail": out[-4000:]}


def _time_us(fn, samples: int, target_us: float = 300.0) -> dict:
    """Median per-call time (µs) of fn: `samples` CUDA-event samples, each over `inner` back-to-back calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = int(min(200, max(1, math.ceil(target_us / max(start.elapsed_time(end) * 1e3, 1e-3)))))
    times = []
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    return {"median_us": statistics.median(times), "min_us": min(times), "inner": inner, "samples": samples}


def _time_graph_us(fn, samples: int, calls: int = 20) -> dict | None:
    """Median per-call GPU time of fn replayed from a CUDA graph of `calls` calls (no launch overhead)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(samples):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / calls)
        del graph
        return {"median_us": statistics.median(times), "min_us": min(times), "calls": calls, "samples": samples}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _bench_shape(zk, zkc, ext, name, hw, cin, cout, stride, batch, samples) -> dict:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(1000 * batch + cin + cout + stride)
    x = torch.randn(batch, cin, hw, hw, device=dev, generator=gen).half().contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, device=dev, generator=gen).half().contiguous(memory_format=torch.channels_last)
    oh = (hw + 2 - 3) // stride + 1
    m, k = batch * oh * oh, cin * 9
    macs = m * cout * k
    row = {"layer": name, "batch": batch, "H": hw, "C": cin, "O": cout, "stride": stride, "M": m, "K_bits": k}

    packed = zk.pack_weights(w.float())
    wq, wtab = zkc.prepare_weights(packed.to(dev), cin)
    act = ext.pack_activations(x, None)
    cfg = int(ext.pick_config(batch, oh, oh, cout))
    row["auto_config"] = ext.config_name(cfg)

    def cudnn():
        return F.conv2d(x, w, None, stride, 1)

    def conv_auto():
        return ext.conv_mma(act, wq, wtab, cout, cin, 3, 3, stride, stride, 1, 1, -1)

    def pack():
        return ext.pack_activations(x, None)

    def end_to_end():
        return zkc.cuda_binary_conv2d(x, packed, cout, cin, 3, stride, 1)

    def simt():
        return ext.conv_simt(act, packed.to(dev), cout, cin, 3, 3, stride, stride, 1, 1)

    # exactness on this shape: tensor cores == CUDA cores == fp32 cuDNN conv of the ±1 tensors (TF32 off)
    with torch.no_grad():
        xs = torch.where(x >= 0, 1.0, -1.0).float()
        ws = torch.where(w >= 0, 1.0, -1.0).float()
        with torch.backends.cudnn.flags(enabled=False):  # cudnn.benchmark may pick Winograd/FFT: inexact in fp32
            ref = F.conv2d(xs, ws, None, stride, 1)
        y = conv_auto()
        row["exact_vs_fp32_conv"] = bool(torch.equal(y, ref))
        row["exact_simt"] = bool(torch.equal(simt(), ref))
        row["exact_end_to_end"] = bool(torch.equal(end_to_end(), ref))
        del xs, ws, ref, y

    timings = {
        "cudnn_fp16": _time_us(cudnn, samples),
        "binary_conv": _time_us(conv_auto, samples),
        "pack": _time_us(pack, samples),
        "binary_pack_plus_conv": _time_us(end_to_end, samples),
    }
    if batch == 1 or m * cout * (k // 64) < 3e9:
        timings["binary_conv_simt"] = _time_us(simt, max(3, samples // 3))
    for c in range(ext.num_configs()):

        def one(c=c):
            return ext.conv_mma(act, wq, wtab, cout, cin, 3, 3, stride, stride, 1, 1, c)

        timings[f"config_{ext.config_name(c)}"] = _time_us(one, max(3, samples // 3))
    graphs = {"cudnn_fp16": _time_graph_us(cudnn, samples), "binary_conv": _time_graph_us(conv_auto, samples)}
    row["eager"] = timings
    row["graph"] = graphs

    t_bin, t_dnn = timings["binary_conv"]["median_us"], timings["cudnn_fp16"]["median_us"]
    row["binary_tops"] = 2 * macs / (t_bin * 1e-6) / 1e12
    row["cudnn_tflops"] = 2 * macs / (t_dnn * 1e-6) / 1e12
    row["speedup_conv"] = t_dnn / t_bin
    row["speedup_end_to_end"] = t_dnn / timings["binary_pack_plus_conv"]["median_us"]
    bytes_moved = act.numel() * 8 + m * cout * 4 + wq.numel() * 8  # packed input + fp32 output + weights
    row["binary_gbps"] = bytes_moved / (t_bin * 1e-6) / 1e9
    best = min((v["median_us"], key) for key, v in timings.items() if key.startswith("config_"))
    row["best_config"] = best[1][len("config_") :]
    row["best_config_us"] = best[0]
    g_bin, g_dnn = graphs["binary_conv"], graphs["cudnn_fp16"]
    if g_bin and g_dnn and "median_us" in g_bin and "median_us" in g_dnn:
        row["speedup_conv_graph"] = g_dnn["median_us"] / g_bin["median_us"]
    return row


def _bench_end_to_end(samples: int) -> dict:
    """Whole ResNet-18 BNN inference forms at batch 1 (224x224) on the GPU, eager and replayed from a CUDA graph,
    beside torchvision's resnet18 (cuDNN, channels_last, fp16 and fp32 with TF32 off), and their logits against the
    fake-quant models' (random weights: a latency check, not an accuracy one). ``resnet18_sdbnn`` computes SD-BNN's
    activation shift with PyTorch ops (~6 small kernels per binary conv); ``resnet18_bireal`` has no such branch, so
    it shows what the packed kernels alone cost."""
    import timm
    import torchvision

    import zoo

    dev = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224, device=dev)
    x16 = x.half().contiguous(memory_format=torch.channels_last)
    row: dict = {"batch": 1, "fake_quant": {}}
    candidates = {}
    for arch in ("resnet18_sdbnn", "resnet18_bireal"):
        bnn = timm.create_model(arch).eval()
        fast = zoo.to_inference(bnn, channels_last=True).to(dev)
        bnn = bnn.to(dev)
        with torch.inference_mode():
            ref, out = bnn(x), fast(x)
        row["fake_quant"][arch] = {"max_abs_logit_diff": float((out - ref).abs().max()),
                                   "same_prediction": bool(torch.equal(out.argmax(1), ref.argmax(1)))}  # fmt: skip
        candidates[f"{arch} packed"] = lambda fast=fast: fast(x)
    row["same_prediction_as_fake_quant"] = all(r["same_prediction"] for r in row["fake_quant"].values())
    dense16 = torchvision.models.resnet18().eval().to(dev).half().to(memory_format=torch.channels_last)
    dense32 = torchvision.models.resnet18().eval().to(dev).to(memory_format=torch.channels_last)
    candidates["torchvision resnet18 fp16 channels_last"] = lambda: dense16(x16)
    candidates["torchvision resnet18 fp32 channels_last"] = lambda: dense32(x)
    with torch.inference_mode():
        row["eager"] = {name: _time_us(fn, samples) for name, fn in candidates.items()}
        row["graph"] = {name: _time_graph_us(fn, samples, calls=5) for name, fn in candidates.items()}
    return row


def _print_end_to_end(row: dict) -> None:
    print("end to end, batch 1, 224x224; logits vs fake-quant: " + ", ".join(
        f"{arch} max |diff| {r['max_abs_logit_diff']:.2e}, same prediction {r['same_prediction']}"
        for arch, r in row["fake_quant"].items()))  # fmt: skip
    for name, eager in row["eager"].items():
        graph = row["graph"].get(name) or {}
        graph_us = f"{graph['median_us']:.1f}us" if "median_us" in graph else graph.get("error", "-")
        print(f"  {name:<42} eager {eager['median_us']:>8.1f}us   CUDA graph {graph_us}")


def _print_table(rows: list[dict]) -> None:
    head = (
        f"{'layer':<12}{'N':>4} {'cuDNN fp16':>11} {'bin conv':>9} {'pack':>7} {'pack+conv':>10} {'simt':>9} "
        f"{'x conv':>7} {'x e2e':>6} {'x graph':>8} {'bin TOPS':>9} {'GB/s':>7}  exact  config (best)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r or "skipped" in r:
            print(f"{r['layer']:<12}{r['batch']:>4} {'ERROR ' + r['error'][:100] if 'error' in r else 'skipped'}")
            continue
        e = r["eager"]
        simt = e.get("binary_conv_simt", {}).get("median_us", float("nan"))
        exact = "yes" if r["exact_vs_fp32_conv"] and r["exact_simt"] and r["exact_end_to_end"] else "NO"
        print(
            f"{r['layer']:<12}{r['batch']:>4} {e['cudnn_fp16']['median_us']:>9.1f}us "
            f"{e['binary_conv']['median_us']:>7.1f}us {e['pack']['median_us']:>5.1f}us "
            f"{e['binary_pack_plus_conv']['median_us']:>8.1f}us {simt:>7.1f}us {r['speedup_conv']:>6.2f}x "
            f"{r['speedup_end_to_end']:>5.2f}x {r.get('speedup_conv_graph', float('nan')):>7.2f}x "
            f"{r['binary_tops']:>9.1f} {r['binary_gbps']:>7.0f}  {exact:<5}  {r['auto_config']} "
            f"({r['best_config']} {r['best_config_us']:.1f}us)"
        )
    print("times: medians per call, eager (launch overhead included); 'x graph': cuDNN / binary, CUDA-graph replays")


def verdict(report: dict) -> bool:
    """Whether everything that ran passed: a crashed section fails; a shape skipped for time does not."""
    e2e = report.get("end_to_end")
    e2e_ok = e2e is None or ("error" not in e2e and e2e.get("same_prediction_as_fake_quant") is True)
    tests_ok = report.get("tests", {}).get("returncode", 0) == 0
    bench_ok = all(
        "error" not in r and r["exact_vs_fp32_conv"] and r["exact_simt"] and r["exact_end_to_end"]
        for r in report.get("bench", [])
        if "skipped" not in r
    )
    return e2e_ok and tests_ok and bench_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="JSON report path (e.g. $OUT/gpu_check.json)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--samples", type=int, default=15, help="timing samples per measurement (median reported)")
    ap.add_argument("--test-timeout", type=int, default=300, help="seconds allowed for the pytest run")
    ap.add_argument("--budget", type=float, default=540.0, help="stop benchmarking after this many seconds in all")
    args = ap.parse_args()
    t_start = time.perf_counter()
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": _device_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        args.out.write_text(json.dumps(report, indent=2, default=str))

    _log(f"device: {json.dumps(report['device'])}")
    if not torch.cuda.is_available():
        report["error"] = "torch.cuda.is_available() is False"
        save()
        _log(report["error"])
        return 2

    zk, zkc, stub_dir = _import_zoo_kernels(report)
    from zoo.kernels.cuda import _build as cuda_build

    _log("building the CUDA extension (first build compiles binding.cpp and binary_conv_cuda.cu)")
    t0 = time.perf_counter()
    ext = cuda_build.load_extension()
    report["build"] = {
        "seconds": round(time.perf_counter() - t0, 1),
        "ok": ext is not None,
        "error": cuda_build.load_error(),
        "dir": str(cuda_build.build_dir()),
        "flags": cuda_build.CUDA_FLAGS,
    }
    report["cpu_kernel_backend"] = zk.kernel_backend()
    _log(f"build: {report['build']}")
    save()
    if ext is None:
        try:  # show the compiler's complaint
            cuda_build.build(verbose=True)
        except Exception:
            report["build"]["traceback"] = traceback.format_exc()[-6000:]
            print(report["build"]["traceback"], flush=True)
        save()
        return 1

    if not args.skip_tests:
        report["tests"] = _run_tests(stub_dir, args.test_timeout)
        _log(f"tests: rc={report['tests']['returncode']} {report['tests']['summary']}")
        save()

    if not args.skip_bench:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # the fp32 exactness reference
        torch.backends.cuda.matmul.allow_tf32 = False
        _log("end to end: resnet18_sdbnn / resnet18_bireal inference forms vs torchvision resnet18")
        try:
            report["end_to_end"] = _bench_end_to_end(args.samples)
            _print_end_to_end(report["end_to_end"])
        except Exception as exc:
            report["end_to_end"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
        torch.cuda.empty_cache()
        save()
        rows = []
        report["bench"] = rows
        for batch in BATCHES:
            for name, hw, cin, cout, stride in SHAPES:
                if time.perf_counter() - t_start > args.budget:
                    rows.append({"layer": name, "batch": batch, "skipped": "time budget exhausted"})
                    continue
                _log(f"bench {name} batch {batch}")
                try:
                    rows.append(_bench_shape(zk, zkc, ext, name, hw, cin, cout, stride, batch, args.samples))
                except Exception as exc:
                    rows.append({"layer": name, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500]})
                    traceback.print_exc()
                torch.cuda.empty_cache()
                save()
        _print_table(rows)

    ok = verdict(report)
    report["ok"] = ok
    save()
    _log(f"done in {report['elapsed_s']} s, ok={ok}; report: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
