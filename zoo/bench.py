"""Benchmarks that print ratios and rates measured in one run."""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def bench_data_pipeline(dataset: str = "fashion_mnist", batch_size: int = 128, batches: int = 200) -> dict[str, Any]:
    """Augmented training images per second delivered by the in-memory batched pipeline (after loading)."""
    from zoo.data import BatchAugment, BatchIterator, dataset_spec, load_dataset, to_tensors  # needs `datasets`

    spec = dataset_spec(dataset)
    images, labels = to_tensors(load_dataset(spec.name, "train"), spec)
    transform = BatchAugment(spec.mean, spec.std, crop_padding=2, hflip=True)
    loader = BatchIterator(images, labels, batch_size, transform, shuffle=True, augment=True, drop_last=True)
    seen, epoch = 0, 0
    start = time.perf_counter()
    while seen < batches * batch_size:
        for x, _ in loader.epoch(epoch):
            seen += len(x)
            if seen >= batches * batch_size:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    return {
        "dataset": spec.name,
        "batch_size": batch_size,
        "images": seen,
        "seconds": round(elapsed, 3),
        "images_per_s": seen / elapsed,
        "threads": torch.get_num_threads(),
    }


KERNEL_LAYER_SHAPES = [  # (name, spatial size, channels) of 3x3, stride-1, pad-1 binary convs
    ("resnet18 stage1 56x56x64", 56, 64),
    ("resnet18 stage2 28x28x128", 28, 128),
    ("resnet18 stage3 14x14x256", 14, 256),
    ("resnet18 stage4 7x7x512", 7, 512),
    ("resnet20 28x28x16", 28, 16),
    ("resnet20 14x14x32", 14, 32),
    ("resnet20 7x7x64", 7, 64),
]
CPU_FLAGS = ("avx512f", "avx512bw", "avx512_vpopcntdq", "avx2", "popcnt", "avx512_vnni", "amx_int8")  # last 2: int8


def median_ms(fn, repeats: int, sync=None) -> float:
    """Median wall time of ``fn()`` in milliseconds, after a short warm-up; ``sync`` waits for a device."""
    for _ in range(max(2, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def interleaved_median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each ``fns[name]()`` in milliseconds, timed in turns (one call of each per round, after a
    short warm-up) so that load from other processes falls on all of them alike."""
    for fn in fns.values():
        for _ in range(max(2, repeats // 10)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def interleaved_burst_ms(
    fns: dict[str, Callable[[], object]], rounds: int, burst: int = 3
) -> dict[str, tuple[float, float]]:
    """(steady, first-call) median wall times in milliseconds of each ``fns[name]()``, timed in turns: one turn calls
    one candidate ``burst`` times in a row. A turn's first call runs after the other candidates evicted its weights and
    buffers from the caches; the later calls run with them in place, as a model serving requests back to back
    ("steady"). Turns interleave the candidates so that load from other processes falls on all of them alike."""
    if burst < 2:
        raise ValueError(f"burst must be >= 2 (a first call and a steady one), got {burst}")
    for fn in fns.values():
        fn()
    steady: dict[str, list[float]] = {name: [] for name in fns}
    first: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for call in range(burst):
                start = time.perf_counter()
                fn()
                (first if call == 0 else steady)[name].append(time.perf_counter() - start)
    return {name: (1e3 * statistics.median(steady[name]), 1e3 * statistics.median(first[name])) for name in fns}


# `zoo bench kernels --isa avx2`: every library in the comparison held to AVX2 on a CPU that has more, the stand-in
# for an AVX2-only machine (read at process start by ATen and at first use by oneDNN / FBGEMM, hence a fresh process).
AVX2_CAPS = {
    "ZOO_KERNEL_ISA": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}
ISA_CAP_ENV = "ZOO_BENCH_ISA_CAP"


def isa_cap_environment(isa: str) -> dict[str, str]:
    """The environment of a bench process held to ``isa`` (only ``avx2``)."""
    if isa != "avx2":
        raise ValueError(f"--isa takes avx2 (every library held to AVX2), got '{isa}'")
    return {**os.environ, **AVX2_CAPS, ISA_CAP_ENV: isa}


def active_isa_cap() -> str | None:
    """The ISA this bench process is held to (``isa_cap_environment``), or None."""
    return os.environ.get(ISA_CAP_ENV) or None


def _cpu_description() -> tuple[str, list[str]]:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown", []
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return name, [f for f in CPU_FLAGS if f in flags]


def _row(group: str, name: str, batch: int, ms: float, baseline: str, baseline_ms: float) -> dict[str, Any]:
    return {"group": group, "name": name, "batch": batch, "ms": round(ms, 4), "baseline": baseline,
            "baseline_ms": round(baseline_ms, 4), "speedup": round(baseline_ms / ms, 2)}  # fmt: skip


def _burst_row(
    group: str, name: str, batch: int, ours: tuple[float, float], baseline: str, theirs: tuple[float, float]
) -> dict[str, Any]:
    """A row from two ``interleaved_burst_ms`` results: steady times as ``ms``, turns' first calls beside them."""
    return _row(group, name, batch, ours[0], baseline, theirs[0]) | {
        "first_call_ms": round(ours[1], 4),
        "baseline_first_call_ms": round(theirs[1], 4),
        "first_call_speedup": round(theirs[1] / ours[1], 2),
    }


def _layer_rows(batches: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    from zoo.kernels import binary_conv2d, pack_weights

    rows = []
    for name, hw, c in KERNEL_LAYER_SHAPES:
        w = torch.randn(c, c, 3, 3)
        packed = pack_weights(w)  # once, as at load time (outside inference mode, so its blocked copy is cached)
        for batch in batches:
            x = torch.randn(batch, c, hw, hw)
            # In turns of bursts: a conv called right after the other has its operands evicted (the fp32 conv's
            # weights alone fill L2), so one call each per round would time the binary conv cold and conv2d warm.
            with torch.inference_mode():
                times = interleaved_burst_ms(
                    {
                        "fp32": lambda x=x, w=w: F.conv2d(x, w, None, 1, 1),
                        "binary": lambda x=x, p=packed, c=c: binary_conv2d(x, p, c, c, 3, 1, 1),
                    },
                    rounds=max(5, repeats // max(1, batch // 8)),
                )
            rows.append(
                _burst_row("conv3x3 (packing included)", name, batch, times["binary"], "F.conv2d fp32", times["fp32"])
            )
    return rows


FP32_NCHW, FP32_CHANNELS_LAST = "torchvision resnet18 fp32 (NCHW)", "torchvision resnet18 fp32 (channels_last)"


def _end_to_end_rows(
    batches: tuple[int, ...], repeats: int, size: int = 224, lce_python: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The packed ``resnet18_sdbnn`` and ``resnet18_bireal`` beside torchvision's fp32 resnet18 and the peers of
    ``zoo.bench_peers`` (int8, ONNX Runtime, Larq Compute Engine), all timed in the same turns on the same input;
    returns (rows, what each peer is or why it was skipped)."""
    import tempfile
    from pathlib import Path

    import timm
    import torchvision

    from zoo.bench_peers import bind_peers, build_peers, peers_summary
    from zoo.inference import to_inference

    bnn = timm.create_model("resnet18_sdbnn").eval()
    fast, dense = to_inference(bnn, channels_last=True), torchvision.models.resnet18().eval()
    unfolded = to_inference(bnn, channels_last=True, fold_bn=False)
    bireal = to_inference(timm.create_model("resnet18_bireal").eval(), channels_last=True)
    dense_cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    name, bireal_name = "resnet18_sdbnn packed, BN folded", "resnet18_bireal packed, BN folded"
    unfolded_name, fake_quant_name = "same BNN packed, BN not folded (no fused epilogue)", "same BNN, fake-quant"
    rows, where = [], f"end-to-end {size}x{size}"
    with tempfile.TemporaryDirectory(prefix="zoo-bench-peers-") as workdir:
        peers = build_peers(dense, torch.get_num_threads(), Path(workdir), lce_python, size, active_isa_cap())
        labels = [peer.label for peer in peers]
        compared = {name: [unfolded_name, FP32_NCHW, FP32_CHANNELS_LAST, fake_quant_name, *labels],
                    bireal_name: [FP32_NCHW, FP32_CHANNELS_LAST, *labels]}  # fmt: skip
        try:
            for batch in batches:
                x = torch.randn(batch, 3, size, size)
                peer_calls, skipped = bind_peers(peers, x)
                with torch.inference_mode():
                    times = interleaved_burst_ms(
                        {
                            name: lambda x=x: fast(x),
                            bireal_name: lambda x=x: bireal(x),
                            unfolded_name: lambda x=x: unfolded(x),
                            FP32_NCHW: lambda x=x: dense(x),
                            FP32_CHANNELS_LAST: lambda x=x: dense_cl(x),
                            fake_quant_name: lambda x=x: bnn(x),
                            **peer_calls,
                        },
                        rounds=max(3, repeats // (4 * batch)),
                    )
                for ours, baselines in compared.items():
                    for label in baselines:
                        if label in skipped:
                            rows.append({"group": where, "name": ours, "batch": batch, "baseline": label,
                                         "skipped": skipped[label]})  # fmt: skip
                            continue
                        rows.append(_burst_row(where, ours, batch, times[ours], label, times[label]))
        finally:
            for peer in peers:
                peer.close()
    return rows, peers_summary(peers)


CUDA_BATCHES = (1, 256)  # the GPU comparison the kernels are built for: latency at batch 1, throughput at 256


def _cuda_rows(repeats: int) -> list[dict[str, Any]]:
    """GPU rows: the binary conv (packing included) against cuDNN fp16 channels_last on each ResNet-18 stage shape, and
    the ``resnet18_sdbnn`` / ``resnet18_bireal`` inference forms against torchvision's resnet18 in fp16 channels_last;
    synchronized medians of eager calls (launch overhead included; ``scripts/gpu_check.py`` also replays CUDA graphs
    and times every tile config)."""
    import timm
    import torchvision

    from zoo.inference import to_inference
    from zoo.kernels import binary_conv2d, pack_weights

    dev, sync, cl = torch.device("cuda"), torch.cuda.synchronize, torch.channels_last
    rows = []
    for name, hw, c in KERNEL_LAYER_SHAPES[:4]:
        w = torch.randn(c, c, 3, 3)
        packed, w16 = pack_weights(w).to(dev), w.to(dev, torch.half).contiguous(memory_format=cl)
        for batch in CUDA_BATCHES:
            x = torch.randn(batch, c, hw, hw, device=dev, dtype=torch.half).contiguous(memory_format=cl)
            with torch.inference_mode():
                cudnn = median_ms(lambda x=x, w=w16: F.conv2d(x, w, None, 1, 1), repeats, sync)
                binary = median_ms(lambda x=x, p=packed, c=c: binary_conv2d(x, p, c, c, 3, 1, 1), repeats, sync)
            rows.append(
                _row("conv3x3 on CUDA (packing included)", name, batch, binary, "cuDNN fp16 channels_last", cudnn)
            )
    dense16 = torchvision.models.resnet18().eval().to(dev).half().to(memory_format=cl)
    for arch in ("resnet18_sdbnn", "resnet18_bireal"):  # Bi-Real: no activation-shift branch, the kernels alone
        fast = to_inference(timm.create_model(arch).eval(), channels_last=True).to(dev)
        for batch in CUDA_BATCHES:
            x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=cl)
            x16 = x.half()
            with torch.inference_mode():
                ours = median_ms(lambda x=x, m=fast: m(x), repeats, sync)
                base = median_ms(lambda x=x16: dense16(x), repeats, sync)
            rows.append(_row("end-to-end 224x224 on CUDA", f"{arch} packed, BN folded", batch, ours,
                             "torchvision resnet18 fp16 channels_last", base))  # fmt: skip
    return rows


SIZE_VARIANTS = ("resnet18_bireal", "resnet18_sdbnn", "resnet18_ir2net", "resnet18_ir2net_d")


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> int:
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        save_file(state, f"{tmp}/model.safetensors")
        return os.path.getsize(f"{tmp}/model.safetensors")


def _checkpoint_sizes() -> dict[str, Any]:
    """model.safetensors bytes of each packed ResNet-18 BNN (classifier in float32, and in float16) and of
    torchvision's fp32 resnet18."""
    import timm
    import torchvision

    from zoo.checkpoint import state_dict_for_saving
    from zoo.inference import pack_binary_weights

    dense = _safetensors_bytes(state_dict_for_saving(torchvision.models.resnet18()))
    sizes: dict[str, dict[str, Any]] = {"packed": {}, "packed_float16_head": {}}
    for arch in SIZE_VARIANTS:
        model = timm.create_model(arch)
        for key, by_arch in sizes.items():
            state = pack_binary_weights(model, state_dict_for_saving(model), float16_head=key.endswith("head"))
            packed = _safetensors_bytes(state)
            by_arch[arch] = {"bytes": packed, "times_smaller": round(dense / packed, 2)}
    return {"torchvision resnet18 fp32 bytes": dense, **sizes}


THREAD_PROBE = "F.conv2d fp32, 128 channels 3x3 on 28x28, batch 1"


def thread_scaling(threads: int, rounds: int = 10) -> dict[str, float]:
    """How much ``threads`` threads speed one fp32 conv2d up over one thread (``interleaved_burst_ms``, steady calls):
    near 1 where the machine's cores are shared or throttled at that moment, and a run's other ratios mean less."""
    generator = torch.Generator().manual_seed(0)  # its own: the rows' inputs stay those of torch.manual_seed(0)
    x, w = torch.randn(1, 128, 28, 28, generator=generator), torch.randn(128, 128, 3, 3, generator=generator)

    def conv_on(n: int) -> Callable[[], object]:
        return lambda: (torch.set_num_threads(n), F.conv2d(x, w, None, 1, 1))

    try:
        times = interleaved_burst_ms({"one": conv_on(1), "threads": conv_on(threads)}, rounds)
    finally:
        torch.set_num_threads(threads)
    one, many = times["one"][0], times["threads"][0]
    return {"one_thread_ms": round(one, 4), "threads_ms": round(many, 4), "speedup": round(one / many, 2)}


def bench_kernels(
    threads: int | None = None,
    batches: tuple[int, ...] = (1, 32),
    repeats: int = 30,
    end_to_end: bool = True,
    lce_python: str | None = None,
) -> dict[str, Any]:
    """Packed binary kernels vs fp32 and the peers of ``zoo.bench_peers``, measured side by side in this run
    (``lce_python``: the Python that runs Larq Compute Engine, see ``zoo.bench_peers.lce_peer``)."""
    from zoo.kernels import kernel_backend

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cpu, flags = _cpu_description()
    scaling_at_start = thread_scaling(torch.get_num_threads())
    rows, peers = _layer_rows(batches, repeats), None
    if end_to_end:
        end_to_end_rows, peers = _end_to_end_rows(batches, repeats, lce_python=lce_python)
        rows += end_to_end_rows
    scaling_at_end = thread_scaling(torch.get_num_threads())
    result = {
        "device": "cpu",
        "cpu": cpu,
        "cpu_flags": flags,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernel_backend": kernel_backend(),
        "isa_cap": None
        if active_isa_cap() is None
        else f"{active_isa_cap()}: the zoo's kernels, oneDNN, ATen and FBGEMM held to it ("
        + ", ".join(f"{k}={v}" for k, v in AVX2_CAPS.items())
        + ")",
        "timing": "medians. Candidates in turns of 3 calls each (layer rows: the binary conv and fp32 conv2d; "
        "end-to-end rows: the models, the peers (int8, ONNX Runtime, Larq Compute Engine) in the same turns); "
        "ms = the 2nd and 3rd calls (the operands in the caches), first_call_ms = a turn's 1st call (after the other "
        "candidates evicted them)",
        "rows": rows,
        "thread_scaling": {"probe": THREAD_PROBE, "start": scaling_at_start, "end": scaling_at_end},
        "checkpoint_size": _checkpoint_sizes(),
    }
    if peers is not None:
        result["peers"] = peers
    if torch.cuda.is_available():
        from zoo.kernels import cuda as cuda_kernels

        gpu = {"device": torch.cuda.get_device_name(), "torch_cuda": torch.version.cuda}
        if cuda_kernels.cuda_kernel_available():
            gpu |= {"rows": _cuda_rows(repeats), "timing": "medians of synchronized eager calls"}
        else:
            gpu["skipped"] = f"no CUDA binary kernel on this GPU: {cuda_kernels.cuda_kernel_unavailable_reason()}"
        result["cuda"] = gpu
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency_row(
    model: torch.nn.Module, input_size: tuple[int, ...], batch: int, repeats: int, device: str = "cpu"
) -> dict[str, Any]:
    x = torch.randn(batch, *input_size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    with torch.inference_mode():
        ms = median_ms(lambda: model(x), repeats, sync)
    return {"batch": batch, "ms": round(ms, 3), "images_per_s": round(1e3 * batch / ms, 1)}


def interleaved_latency_rows(
    models: dict[str, torch.nn.Module], input_size: tuple[int, ...], batch: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """CPU latency of each model at ``batch``, timed in turns so that outside load falls on all of them alike."""
    x = torch.randn(batch, *input_size)
    with torch.inference_mode():
        ms = interleaved_median_ms({name: (lambda m=m: m(x)) for name, m in models.items()}, repeats)
    return {name: {"batch": batch, "ms": round(t, 3), "images_per_s": round(1e3 * batch / t, 1)}
            for name, t in ms.items()}  # fmt: skip


def bench_models(
    models: dict[str, torch.nn.Module],
    input_size: tuple[int, ...],
    batches: tuple[int, ...] = (1, 64),
    repeats: int = 20,
) -> dict[str, Any]:
    """Latency and throughput of several models on one input size, measured side by side (in turns) in this process.

    On a machine with CUDA, ``cuda`` holds the same rows measured on the GPU (copies of the models are moved).
    """
    per_batch = {b: interleaved_latency_rows(models, input_size, b, max(9, repeats // max(1, b // 16)))
                 for b in batches}  # fmt: skip
    results = {name: [per_batch[b][name] for b in batches] for name in models}
    cpu, flags = _cpu_description()
    out = {"device": "cpu", "cpu": cpu, "cpu_flags": flags, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "results": results, "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
    if torch.cuda.is_available():
        on_gpu = {name: copy.deepcopy(m).to("cuda") for name, m in models.items()}
        out["cuda"] = {
            "device": torch.cuda.get_device_name(),
            "results": {
                name: [latency_row(m, input_size, b, repeats, "cuda") for b in batches] for name, m in on_gpu.items()
            },  # fmt: skip
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        }
    return out


PACKED, PACKED_AVX2, FAKE_QUANT = "packed 1-bit kernels", "packed 1-bit kernels, AVX2 path", "fake-quant fp32"
PARENT_FP32, PARENT_INT8 = "dense parent (fp32)", "dense parent (int8, x86 static PTQ)"
INT8_CALIBRATION_IMAGES = 256


class OnKernelPath(torch.nn.Module):
    """``model`` with the zoo's kernels held to ``isa``'s code path during each call (PyTorch's own ops unchanged)."""

    def __init__(self, model: torch.nn.Module, isa: str) -> None:
        super().__init__()
        self.model, self.isa = model, isa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from zoo.kernels import kernel_isa

        with kernel_isa(self.isa):
            return self.model(x)


def speed_candidates(
    checkpoint_id: str,
    model: torch.nn.Module,
    parent: torch.nn.Module | None,
    int8_parent: torch.nn.Module | None = None,
) -> dict[str, torch.nn.Module]:
    """What a checkpoint's speed is shown against: its packed form (on the CPU's best kernel path and, where that is
    AVX-512, on the AVX2 path too) and fake-quant form (BNNs), its dense parent in fp32 and, given, in int8."""
    from zoo.inference import to_inference
    from zoo.kernels import available_isas, kernel_backend

    model = model.eval()
    binary = any(getattr(m, "binary", False) for m in model.modules())
    if binary:
        packed = to_inference(model, channels_last=True)
        candidates = {f"{checkpoint_id} ({PACKED})": packed}
        if kernel_backend().startswith("avx512") and "avx2" in available_isas():
            candidates[f"{checkpoint_id} ({PACKED_AVX2})"] = OnKernelPath(packed, "avx2")
        candidates[f"{checkpoint_id} ({FAKE_QUANT})"] = model
    else:
        candidates = {f"{checkpoint_id} (fp32)": model}
    if parent is not None:
        candidates[PARENT_FP32] = parent.eval()
    if int8_parent is not None:
        candidates[PARENT_INT8] = int8_parent
    return candidates


def _int8_parent(
    parent: torch.nn.Module, dataset: str, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.nn.Module | None, str]:
    """The dense parent quantized to int8 on this CPU's x86 engine, calibrated on real training images of
    ``dataset``, and how (or why not)."""
    from zoo.data import dataset_spec, load_dataset, to_tensors
    from zoo.data.augment import normalize
    from zoo.int8 import quantize_int8_fx, x86_engine

    engine = x86_engine()
    if engine is None:
        return None, f"skipped: this torch build has no x86 or fbgemm engine ({torch.backends.quantized.engine})"
    spec = dataset_spec(dataset)
    try:
        images, _ = to_tensors(load_dataset(spec.name, "train"), spec, limit=INT8_CALIBRATION_IMAGES)
    except Exception as exc:  # no training split here: the int8 row is left out, and the result says why
        return None, f"skipped: no {spec.name} training images to calibrate on ({type(exc).__name__}: {exc})"
    how = (f"FX graph-mode post-training static quantization (torch.ao.quantization, engine {engine}, its default "
           f"qconfig mapping), calibrated on the first {len(images)} {spec.name} training images")  # fmt: skip
    return quantize_int8_fx(parent, normalize(images, mean, std), engine), how


def measure_checkpoint_speed(
    checkpoint_id: str,
    model: torch.nn.Module,
    parent: torch.nn.Module | None,
    dataset: str,
    input_size: tuple[int, ...],
    mean: Sequence[float],
    std: Sequence[float],
    batches: tuple[int, ...] = (1, 64),
    repeats: int = 20,
) -> dict[str, Any]:
    """A checkpoint's speed block (at export and by ``zoo bench <id>``): ``speed_candidates`` measured side by side,
    for a BNN with its dense parent also in int8, and notes on the rows that need them."""
    from zoo.int8 import quantized_engine, x86_engine

    int8_parent, int8_how = None, None
    if parent is not None and any(getattr(m, "binary", False) for m in model.modules()):
        int8_parent, int8_how = _int8_parent(parent.eval(), dataset, mean, std)
    candidates = speed_candidates(checkpoint_id, model, parent, int8_parent)
    with quantized_engine(x86_engine() or torch.backends.quantized.engine):
        result = bench_models(candidates, input_size, batches, repeats)
    notes = {}
    if int8_how:
        notes[PARENT_INT8] = int8_how
    if any(name.endswith(f"({PACKED_AVX2})") for name in candidates):
        notes[PACKED_AVX2] = (
            "the zoo's kernels forced to their AVX2 code path (zoo.kernels.kernel_isa) in the same process; "
            "PyTorch's own float ops (stem, classifier) keep the CPU's best path"
        )
    return {**result, **({"notes": notes} if notes else {})}


def bench_checkpoint(
    checkpoint_id: str, batches: tuple[int, ...] = (1, 64), repeats: int = 20, threads: int | None = None
) -> dict[str, Any]:
    """A released checkpoint measured as at export (``measure_checkpoint_speed``), in this process."""
    from zoo.api import from_pretrained
    from zoo.registry import manifest_entry

    if threads:
        torch.set_num_threads(threads)
    entry = manifest_entry(checkpoint_id)
    parent_id = entry["compression"].get("dense_parent")
    parent = from_pretrained(parent_id) if parent_id else None
    cfg = entry["pretrained_cfg"]
    speed = measure_checkpoint_speed(checkpoint_id, from_pretrained(checkpoint_id), parent,
                                     entry["metrics"]["dataset"], tuple(cfg["input_size"]), cfg["mean"], cfg["std"],
                                     batches, repeats)  # fmt: skip
    return {"id": checkpoint_id, **speed}


def record_checkpoint_speed(result: dict[str, Any]) -> dict[str, Any]:
    """Store a ``bench_checkpoint`` result as ``models/<id>``'s speed block (config.json and card); return the config.

    For re-measuring a released checkpoint after the kernels changed: the block says when and from which code commit
    it was measured, and the card says it was re-measured after export. Weights and all other metadata stay as they
    are (the weights' sha256 is untouched).
    """
    import datetime

    from zoo.cards import render_card
    from zoo.checkpoint import update_checkpoint_config
    from zoo.errors import WeightsNotFoundError
    from zoo.provenance import git_commit
    from zoo.registry import CONFIG_NAME, models_dir

    folder = models_dir() / result["id"]
    if not (folder / CONFIG_NAME).is_file():
        raise WeightsNotFoundError(
            f"cannot record the speed of {result['id']!r}: {folder / CONFIG_NAME} does not exist. --record rewrites a "
            "checkpoint folder of this repository's models/ (a clone of the zoo, not a pip install)."
        )
    batches = {row["batch"] for rows in result["results"].values() for row in rows}
    if not {1, 64} <= batches:
        raise ValueError(
            f"cannot record a speed measured at batch {sorted(batches)}: a card's speed block (and the leaderboard's "
            "latency columns) needs batches 1 and 64, as at export. Drop --batch or pass --batch 1 64."
        )
    speed = {key: value for key, value in result.items() if key != "id"}
    speed["remeasured"] = {"date": datetime.date.today().isoformat(), "code_commit": git_commit()}

    def set_speed(config: dict[str, Any]) -> None:
        config["zoo"]["speed"] = speed

    return update_checkpoint_config(folder, set_speed, render_card)
