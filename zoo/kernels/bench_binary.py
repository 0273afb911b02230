"""Latency of the packed binary conv vs ``F.conv2d`` fp32 on the same float input (ResNet-18 / ResNet-20 shapes).

    python -m zoo.kernels.bench_binary [--threads 2] [--batch 1] [--repeats 50] [--isa auto] [--channels-last]

The binary time includes the fused sign-and-pack of the float activations (weights are packed once, as at load
time). Both sides use ``torch.set_num_threads(--threads)``; the table reports the median (and the minimum, which
is less sensitive to other processes on a loaded machine) in microseconds; GBOP/s = binary MACs / median time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from zoo.kernels import binary_conv2d, kernel_backend, pack_weights, set_kernel_isa

SHAPES = [
    ("resnet18 56x56x64->64", 56, 64),
    ("resnet18 28x28x128->128", 28, 128),
    ("resnet18 14x14x256->256", 14, 256),
    ("resnet18 7x7x512->512", 7, 512),
    ("resnet20 28x28x16->16", 28, 16),
    ("resnet20 14x14x32->32", 14, 32),
    ("resnet20 7x7x64->64", 7, 64),
]


def _times_us(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall time in microseconds."""
    for _ in range(max(3, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6, min(times) * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--isa", default=None, help="auto, scalar, avx2, avx512 (default: ZOO_KERNEL_ISA or auto)")
    ap.add_argument("--channels-last", action="store_true", help="feed channels_last inputs to both sides")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.isa:
        set_kernel_isa(args.isa)
    torch.manual_seed(0)
    print(f"backend={kernel_backend()} threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__}")
    print(
        f"{'shape (3x3, pad 1)':28s} {'fp32 us':>10s} {'binary us':>10s} {'speedup':>8s} {'GBOP/s':>7s}   "
        f"{'min fp32':>9s} {'min bin':>8s} {'min speedup':>11s}"
    )
    for name, hw, c in SHAPES:
        x = torch.randn(args.batch, c, hw, hw)
        if args.channels_last:
            x = x.to(memory_format=torch.channels_last)
        w = torch.randn(c, c, 3, 3)
        pw = pack_weights(w)  # at load time, outside inference mode (so the blocked layout is cached)
        with torch.inference_mode():
            t_fp, m_fp = _times_us(lambda x=x, w=w: F.conv2d(x, w, None, 1, 1), args.repeats)
            t_bin, m_bin = _times_us(lambda x=x, pw=pw, c=c: binary_conv2d(x, pw, c, c, 3, 1, 1), args.repeats)
            bops = args.batch * hw * hw * c * c * 9
            print(
                f"{name:28s} {t_fp:10.1f} {t_bin:10.1f} {t_fp / t_bin:7.1f}x {bops / t_bin / 1e3:7.1f}   "
                f"{m_fp:9.1f} {m_bin:8.1f} {m_fp / m_bin:10.1f}x"
            )


if __name__ == "__main__":
    main()
