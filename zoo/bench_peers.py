"""The peers ``zoo bench kernels`` times the packed ResNet-18 BNNs against, besides eager fp32 PyTorch.

- ``torchvision resnet18 int8``: ``torchvision.models.quantization.resnet18`` (conv+BN+ReLU fused), post-training
  static quantization in eager mode (``torch.ao.quantization``, the x86 engine and its default qconfig, fbgemm where
  a build has no x86 engine), calibrated on the 20 real ImageNet images of ``tests/fixtures/foolbox`` (random inputs
  where the repository's fixtures are not there);
- ``onnxruntime resnet18 fp32``: the same torchvision ``resnet18`` as the fp32 rows, exported by
  :func:`zoo.export_onnx.export_onnx` and run by ONNX Runtime's CPU provider with ``intra_op_num_threads`` = the
  bench's threads and every graph optimization;
- ``Larq Compute Engine``: a Bi-Real ResNet-18 of the zoo's ``resnet18_bireal`` layout converted to LCE's flatbuffer
  and run by its interpreter with the same threads, in a separate Python (``zoo/bench_lce_worker.py``; LCE 0.16.0
  needs NumPy 1.x) timed from here through a pipe.

Weights are random (nothing is downloaded): these rows measure speed, not accuracy. A peer that cannot be built or run
is returned with the reason (the real error), and the bench reports its rows as skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.int8 import quantized_engine, quiet_ptq_warnings, x86_engine

INT8 = "torchvision resnet18 int8 (x86 static PTQ)"
ORT = "onnxruntime resnet18 fp32"
LCE = "Larq Compute Engine Bi-Real ResNet-18"
LCE_PYTHON_ENV = "ZOO_BENCH_LCE_PYTHON"
CALIBRATION_IMAGES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "foolbox" / "imagenet" / "train"
LCE_WORKER = Path(__file__).with_name("bench_lce_worker.py")


@dataclass
class Peer:
    """One peer: ``bind(x)`` returns the call to time on the bench's input ``x`` (NCHW float32), or raises; a peer
    that could not be built has ``skipped`` (why) instead."""

    label: str
    note: str = ""
    bind: Callable[[torch.Tensor], Callable[[], object]] | None = None
    skipped: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


class LceWorkerError(RuntimeError):
    """An error the LCE worker reported; its message starts with the worker's own exception type."""


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LceWorkerError) else f"{type(exc).__name__}: {exc}".strip()


def calibration_batch(size: int = 224) -> tuple[torch.Tensor, str]:
    """The repository's real ImageNet images with torchvision's ImageNet evaluation transform (resize, center crop to
    ``size``, ImageNet normalisation), and what they are; N(0, 1) noise where the fixtures are not there."""
    paths = sorted(CALIBRATION_IMAGES.glob("*/*.jpg"))
    if not paths:
        noise = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
        return noise, f"8 N(0, 1) random inputs ({CALIBRATION_IMAGES} is not there: not a clone of the repository)"
    from PIL import Image
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(size * 256 // 224, antialias=True), v2.CenterCrop(size),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(transform(image.convert("RGB")))
    return torch.stack(images), f"{len(paths)} real ImageNet images (tests/fixtures/foolbox)"


def int8_peer(size: int = 224) -> Peer:
    """torchvision's quantizable resnet18 (random weights), fused and statically quantized to int8 for x86."""
    engine = x86_engine()
    if engine is None:
        engines = torch.backends.quantized.supported_engines
        return Peer(INT8, skipped=f"this torch build has no x86 or fbgemm quantized engine (it has {engines})")
    from torch.ao import quantization as tq
    from torchvision.models.quantization import resnet18

    on_engine = ExitStack()  # the engine is process-wide: held while the peer lives, restored by close()
    on_engine.enter_context(quantized_engine(engine))
    calibration, calibrated_on = calibration_batch(size)
    with quiet_ptq_warnings():
        model = resnet18(weights=None, quantize=False).eval()
        model.fuse_model(is_qat=False)
        model.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(model, inplace=True)
        with torch.no_grad():
            model(calibration)
        tq.convert(model, inplace=True)

    note = (f"torchvision.models.quantization.resnet18, random weights (speed only), conv+BN+ReLU fused, eager "
            f"post-training static quantization (torch.ao.quantization, engine {engine}, its default qconfig), "
            f"calibrated on {calibrated_on}")  # fmt: skip
    return Peer(INT8, note, bind=lambda x: lambda: model(x), info={"engine": engine, "calibration": calibrated_on},
                close=on_engine.close)  # fmt: skip


def ort_peer(dense: torch.nn.Module, threads: int, workdir: Path, size: int = 224) -> Peer:
    """``dense`` (the fp32 rows' torchvision resnet18) exported by the zoo's ONNX path, run by ONNX Runtime."""
    from zoo.errors import MissingExtraError
    from zoo.export_onnx import export_onnx

    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingExtraError(exc.name or "onnxruntime", "bench", f"the ONNX Runtime peer ({exc})") from exc

    path = export_onnx(dense, workdir / "resnet18.onnx", (3, size, size))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: a spinning pool would take the cores of the next candidate's turn.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    info = {"onnxruntime": ort.__version__, "intra_op_num_threads": threads, "max_abs_diff_vs_torch": None}

    def bind(x: torch.Tensor) -> Callable[[], object]:
        feed = {session.get_inputs()[0].name: x.numpy()}
        with torch.inference_mode():
            reference = dense(x).numpy()
        info["max_abs_diff_vs_torch"] = float(np.abs(session.run(None, feed)[0] - reference).max())
        return lambda: session.run(None, feed)

    note = (
        f"the fp32 rows' torchvision resnet18 through zoo.export_onnx (TorchScript exporter), onnxruntime "
        f"{ort.__version__} CPUExecutionProvider, intra_op_num_threads={threads}, ORT_ENABLE_ALL, no spin-wait"
    )
    return Peer(ORT, note, bind=bind, info=info)


class LceWorker:
    """``zoo/bench_lce_worker.py`` running in ``python``: one line per request on its stdin, one per answer."""

    def __init__(self, python: str, workdir: Path) -> None:
        self.workdir = workdir
        self.stderr_path = workdir / "lce_worker.stderr"
        with open(self.stderr_path, "wb") as stderr:
            # -I: the worker's own folder (zoo/, whose module names could shadow its imports) stays off sys.path.
            self.process = subprocess.Popen([python, "-I", str(LCE_WORKER)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=stderr, cwd=workdir)  # fmt: skip
        try:
            self.ready = self._message()
        except BaseException:
            self.close()
            raise

    def _message(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise RuntimeError(f"the LCE worker exited (code {self.process.returncode}): {self._stderr_tail()}")
        message = json.loads(line)
        if "error" in message:
            raise LceWorkerError(message["error"])
        return message

    def _send(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def load(self, x_nhwc: np.ndarray, threads: int) -> dict[str, Any]:
        batch, size = x_nhwc.shape[0], x_nhwc.shape[1]
        path = self.workdir / f"input_b{batch}.npy"
        np.save(path, x_nhwc)
        self._send(json.dumps({"load": {"batch": batch, "size": size, "threads": threads, "input": str(path)}}))
        return self._message()["loaded"]

    def call(self, command: str) -> None:
        self._send(command)
        if self.process.stdout.readline() != b"ok\n":
            raise RuntimeError(f"the LCE worker did not answer {command!r}: {self._stderr_tail()}")

    def _stderr_tail(self, lines: int = 3) -> str:
        return " | ".join(self.stderr_path.read_text(errors="replace").strip().splitlines()[-lines:])

    def close(self) -> None:
        self.process.stdin.close()  # end of input ends the worker
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def lce_peer(threads: int, workdir: Path, python: str | None = None) -> Peer:
    """LCE's interpreter on the Bi-Real ResNet-18 of ``zoo/bench_lce_worker.py``, in ``python`` (default:
    ``$ZOO_BENCH_LCE_PYTHON``, else this Python)."""
    python = python or os.environ.get(LCE_PYTHON_ENV) or sys.executable
    try:
        worker = LceWorker(python, workdir)
    except Exception as exc:
        hint = f"`zoo bench kernels --lce-python PATH` or ${LCE_PYTHON_ENV} names one that has it, see the README"
        return Peer(LCE, skipped=f"{_reason(exc)} (in {python}; {hint})")
    versions = worker.ready["ready"]
    info: dict[str, Any] = {**versions, "num_threads": threads, "use_indirect_bgemm": True}

    def bind(x: torch.Tensor) -> Callable[[], object]:
        loaded = worker.load(np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()), threads)
        if not loaded["finite"]:
            raise RuntimeError(f"LCE's Bi-Real ResNet-18 returned non-finite logits at batch {x.shape[0]}")
        info.setdefault("per_batch", {})[x.shape[0]] = loaded
        info["pipe_round_trip_ms"] = round(_round_trip_ms(worker), 4)
        command = f"run {x.shape[0]}"
        return lambda: worker.call(command)

    note = (f"larq-compute-engine {versions['larq_compute_engine']} (TensorFlow {versions['tensorflow']}) on a "
            f"Keras Bi-Real ResNet-18 of resnet18_bireal's layout (random ±1 binary weights, zero padding, PReLU), "
            f"convert_keras_model, interpreter num_threads={threads}, indirect BGEMM; NHWC copy of the same input, "
            f"timed from this process through a pipe to {versions['python']}")  # fmt: skip
    return Peer(LCE, note, bind=bind, info=info, close=worker.close)


def _round_trip_ms(worker: LceWorker, calls: int = 50) -> float:
    import statistics
    import time

    times = []
    for _ in range(calls):
        start = time.perf_counter()
        worker.call("ping")
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def build_peers(dense: torch.nn.Module, threads: int, workdir: Path, lce_python: str | None = None,
                size: int = 224, isa_cap: str | None = None) -> list[Peer]:  # fmt: skip
    """Every peer, built (or skipped with the reason); ``dense`` is the fp32 rows' torchvision resnet18. Under an ISA
    cap (``zoo bench kernels --isa avx2``) the peers whose libraries cannot be held to it are skipped."""
    builders = {
        INT8: lambda: int8_peer(size),
        ORT: lambda: ort_peer(dense, threads, workdir, size),
        LCE: lambda: lce_peer(threads, workdir, lce_python),
    }
    peers = []
    for label, build in builders.items():
        if isa_cap is not None and label in (ORT, LCE):
            why = f"its library picks its kernels from the CPU's flags and cannot be held to {isa_cap} on this CPU"
            peers.append(Peer(label, skipped=f"{why}; run without --isa on a real {isa_cap}-only CPU"))
            continue
        try:
            peers.append(build())
        except Exception as exc:  # a peer that cannot be built is reported, it does not stop the bench
            peers.append(Peer(label, skipped=_reason(exc)))
    return peers


def bind_peers(peers: list[Peer], x: torch.Tensor) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """(the calls to time on ``x``, by label; why each other peer is skipped at this batch, by label)."""
    calls, skipped = {}, {}
    for peer in peers:
        if peer.skipped is not None:
            skipped[peer.label] = peer.skipped
            continue
        try:
            calls[peer.label] = peer.bind(x)
        except Exception as exc:
            skipped[peer.label] = _reason(exc)
    return calls, skipped


def peers_summary(peers: list[Peer]) -> dict[str, dict[str, Any]]:
    """What each peer is (``note``, ``info``) or why it was skipped, for the bench's JSON."""
    return {p.label: {"skipped": p.skipped} if p.skipped else {"note": p.note, **p.info} for p in peers}


def peer_lines(result: dict[str, Any]) -> list[str]:
    """The table's footnotes: what each peer is, or why it (or one batch of it) was skipped."""
    peers = result.get("peers") or {}
    lines = ["peers:"] if peers else []
    for label, about in peers.items():
        if about.get("skipped"):
            lines.append(f"  {label}: skipped: {about['skipped']}")
            continue
        lines.append(f"  {label}: {about['note']}")
        if about.get("max_abs_diff_vs_torch") is not None:
            lines.append(f"    logits vs torch: max abs diff {about['max_abs_diff_vs_torch']:.2e}")
        if about.get("pipe_round_trip_ms") is not None:
            lines.append(f"    pipe round trip (included in its times): {about['pipe_round_trip_ms']:.3f} ms")
        for batch, loaded in (about.get("per_batch") or {}).items():
            ops = ", ".join(f"{n} {op}" for op, n in loaded["ops"].items())
            lines.append(f"    batch {batch}: converted in {loaded['convert_s']:.1f} s, {ops}")
    batch_skips = {(r["baseline"], r["batch"], r["skipped"]) for r in result["rows"] if r.get("skipped")}
    for label, batch, reason in sorted(batch_skips):
        if not (peers.get(label) or {}).get("skipped"):
            lines.append(f"  {label} at batch {batch}: skipped: {reason}")
    return lines
