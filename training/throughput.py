"""Training throughput of an architecture on the CPU: ``python -m training.throughput resnet20_bnn [...]``.

Times whole training steps (the recipe objective's forward, backward and an SGD step on a channels_last batch of
Fashion-MNIST's shape) on the zoo's CPU kernels and, in the same run and in turns, on plain PyTorch ops
(``ZOO_KERNEL_ISA=torch``: sign by ``torch.where``, the estimators' eager formulas, ``F.conv2d`` on the ±1
operands). Both compute the same numbers bit for bit (tests/test_training_kernels.py), so the ratio is the gain
of the kernels alone. ``--precision bf16`` also times the kernels in that ``train.mixed_precision`` setting
(training/recipe.py), in the same turns.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import timm
import torch

import zoo  # noqa: F401 - registers the architectures with timm
from training.objectives import ObjectiveContext, get_objective
from training.recipe import MIXED_PRECISION
from zoo.bench import interleaved_median_ms
from zoo.kernels import kernel_backend, set_kernel_isa

OBJECTIVE_OF = {"resnet20_ir2net": "ir2net"}  # the rest train with cross-entropy


def _training_step(arch: str, batch: int, in_chans: int, size: int, seed: int, precision: str = "fp32"):
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=10, in_chans=in_chans).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    objective = get_objective(OBJECTIVE_OF.get(arch, "cross_entropy"))
    images = torch.randn(batch, in_chans, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    context = ObjectiveContext(autocast_dtype=MIXED_PRECISION[precision])

    def step() -> None:
        loss = objective(model, images, labels, context)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _on_isa(isa: str | None, fn):
    def run() -> None:
        set_kernel_isa(isa)
        try:
            fn()
        finally:
            set_kernel_isa(None)

    return run


def training_throughput(
    archs: list[str],
    batch: int = 128,
    steps: int = 6,
    threads: int | None = None,
    size: int = 28,
    precisions: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Images per second of a training step of each architecture, on the zoo's kernels and on plain PyTorch (both in
    float32), and on the kernels in each of ``precisions`` (``train.mixed_precision`` values)."""
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for arch in archs:
        paths = {"kernels": _training_step(arch, batch, 1, size, seed=0),  # a model for each path
                 "torch": _on_isa("torch", _training_step(arch, batch, 1, size, seed=0))}  # fmt: skip
        paths |= {f"kernels_{p}": _training_step(arch, batch, 1, size, 0, p) for p in precisions}
        ms = interleaved_median_ms(paths, steps)
        row: dict[str, Any] = {"arch": arch, "batch": batch}
        for path, path_ms in ms.items():
            row |= {f"{path}_ms": path_ms, f"{path}_images_per_s": 1e3 * batch / path_ms}
        row["speedup"] = ms["torch"] / ms["kernels"]
        row |= {f"speedup_{p}": ms["torch"] / ms[f"kernels_{p}"] for p in precisions}
        rows.append(row)
    return {"threads": torch.get_num_threads(), "kernel_backend": kernel_backend(), "torch": torch.__version__,
            "input": f"{batch}x1x{size}x{size} channels_last", "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archs", nargs="+", help="e.g. resnet20 resnet20_bnn resnet20_sdbnn resnet20_ir2net")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per path (after a warm-up)")
    parser.add_argument("--size", type=int, default=28, help="image side (32: the padded fashion_mnist_32)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    parser.add_argument("--precision", nargs="*", default=[], choices=sorted(set(MIXED_PRECISION) - {"fp32"}),
                        help="also time the kernels in these train.mixed_precision settings")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = training_throughput(
        args.archs, args.batch, args.steps, args.threads, args.size, precisions=tuple(args.precision)
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"training step, {result['input']}, {result['threads']} threads, kernel {result['kernel_backend']}")
    for r in result["rows"]:
        print(f"  {r['arch']:<18} kernels {r['kernels_images_per_s']:7.0f} img/s   plain PyTorch "
              f"{r['torch_images_per_s']:7.0f} img/s   {r['speedup']:.2f}x", end="")  # fmt: skip
        for p in args.precision:
            print(f"   kernels {p} {r[f'kernels_{p}_images_per_s']:7.0f} img/s {r[f'speedup_{p}']:.2f}x", end="")
        print()


if __name__ == "__main__":
    main()
