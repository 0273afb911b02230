"""The CUDA kernels' logic on a CPU: binary_conv_cuda.cu compiled as host C++ and run on the CTA emulator
(tests/cuda_emulator.py), against F.conv2d on ±1 tensors and the CPU packer, bit for bit.

Every tile config with 8- and 16-byte activation copies, and the CUDA-core path, over the ResNet-18 layer shapes
and randomized ones (channels 1-640 with garbage bits past C, kernels 1-5 and non-square, strides 1-3, padding up
to beyond the kernel, extra K padding); the fused epilogue against the CPU kernel; the sign-and-pack kernels over
every dtype, memory layout and threshold form, with ties, NaN and inf, and grids smaller than the work. Mutants of
the kernel source show the emulator fails a broken kernel.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from cuda_emulator import DTYPES, KERNEL_SOURCE, NUM_CONFIGS, EmulatedKernels, build, compiler
from kernel_inputs import LAYOUTS, in_layout, with_ties

import zoo.kernels as zk
from zoo.kernels import cuda as zkc

# (N, C, H, W, O, KH, KW, stride h, stride w, pad h, pad w)
FIXED_SHAPES = [
    (1, 64, 5, 5, 8, 3, 3, 1, 1, 1, 1),
    (2, 130, 7, 6, 33, 3, 3, 2, 2, 1, 1),
    (1, 3, 4, 4, 70, 3, 3, 1, 1, 1, 1),
    (1, 5, 1, 1, 1, 3, 3, 1, 1, 1, 1),  # every tap of the only pixel but the centre is padding
    (1, 64, 3, 3, 9, 3, 3, 1, 1, 3, 3),  # padding beyond the kernel: windows with no tap in the image
    (1, 65, 2, 7, 3, 1, 1, 2, 2, 2, 2),
    (1, 128, 9, 9, 130, 3, 3, 2, 2, 1, 1),  # 128-channel tile with a partial second column of CTAs
    (2, 256, 6, 6, 64, 1, 1, 2, 2, 0, 0),
    (1, 300, 5, 8, 17, 3, 3, 2, 2, 0, 0),
    (1, 200, 6, 5, 12, 2, 5, 1, 2, 1, 2),  # non-square kernel, stride and padding
    (1, 1, 6, 6, 5, 5, 5, 1, 1, 2, 2),
    (3, 640, 3, 3, 24, 3, 3, 1, 1, 1, 1),  # 10 words per tap: a 512-bit stage spans taps
    (1, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1),  # more than one 128-pixel tile
    # the ResNet-18 (ImageNet) binary convs at batch 1, as the GPU runs them
    (1, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1),
    (1, 64, 56, 56, 128, 3, 3, 2, 2, 1, 1),
    (1, 128, 28, 28, 128, 3, 3, 1, 1, 1, 1),
    (1, 128, 28, 28, 256, 3, 3, 2, 2, 1, 1),
    (1, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1),
    (1, 256, 14, 14, 512, 3, 3, 2, 2, 1, 1),
    (1, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1),
]


def _random_shapes(count: int, seed: int) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    shapes = []
    while len(shapes) < count:
        c = rng.choice([1, 3, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 192, 256, 300])
        o = rng.choice([1, 2, 7, 8, 9, 16, 24, 33, 64, 65, 128, 129, 136])
        kh, kw = rng.choice([1, 2, 3, 5]), rng.choice([1, 2, 3, 5])
        sh, sw, ph, pw = rng.choice([1, 2, 3]), rng.choice([1, 2]), rng.choice([0, 1, 2, 4]), rng.choice([0, 1, 3])
        n, h, w = rng.randint(1, 3), rng.randint(1, 12), rng.randint(1, 12)
        if h + 2 * ph >= kh and w + 2 * pw >= kw and n * h * w * o * c * kh * kw <= 3e6:
            shapes.append((n, c, h, w, o, kh, kw, sh, sw, ph, pw))
    return shapes


SHAPES = FIXED_SHAPES + _random_shapes(30, seed=0)


def _require_compiler() -> None:
    if compiler() is None:  # CI always has one: the CPU kernel is built with it
        pytest.skip("no C++ compiler (c++ / g++ / $CXX) to build the emulator")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> EmulatedKernels:
    _require_compiler()
    return EmulatedKernels(build(tmp_path_factory.mktemp("cuda_emulation")))


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).float()


def _operands(shape: tuple[int, ...], seed: int, garbage_tail: bool = True, extra_k_words: int = 0):
    """Packed activations / weights of random ±1 tensors (with exact zeros), the prepared weights, the geometry and
    the expected output F.conv2d(sign(x), sign(w))."""
    n, c, h, w, o, kh, kw, sh, sw, ph, pw = shape
    gen = torch.Generator().manual_seed(seed)
    x = with_ties(torch.randn(n, c, h, w, generator=gen), gen)
    weight = torch.randn(o, c, kh, kw, generator=gen)
    act, packed = zk.pack_activations(x), zk.pack_weights(weight)
    if garbage_tail and c % 64:  # bits past C must not count, whatever they hold
        act[..., -1] |= ~((1 << (c % 64)) - 1)
        packed[..., -1] |= ~((1 << (c % 64)) - 1)
    wq, wtab = zkc.prepare_weights(packed, c)
    if extra_k_words:
        wq = torch.cat([wq, torch.zeros(o, extra_k_words, dtype=torch.int64)], 1).contiguous()
    expected = F.conv2d(_sign(x), _sign(weight), stride=(sh, sw), padding=(ph, pw))
    geometry = {"C": c, "O": o, "KH": kh, "KW": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw,
                "OH": expected.shape[2], "OW": expected.shape[3]}  # fmt: skip
    return act, packed, wq, wtab, geometry, expected


def _at_offset(act: torch.Tensor, words: int) -> torch.Tensor:
    """``act`` copied to an address ``8 * words`` bytes past a 16-byte boundary (8-byte copies must cope with it)."""
    buf = torch.empty(act.numel() + 2, dtype=torch.int64)
    start = words if buf.data_ptr() % 16 == 0 else (words + 1) % 2
    out = buf[start : start + act.numel()].view(act.shape)
    out.copy_(act)
    return out


def _shape_id(shape: tuple[int, ...]) -> str:
    n, c, h, w, o, kh, kw, sh, sw, ph, pw = shape
    return f"n{n}c{c}_{h}x{w}_o{o}_k{kh}x{kw}_s{sh}{sw}_p{ph}{pw}"


@pytest.mark.parametrize("index", range(len(SHAPES)), ids=[_shape_id(s) for s in SHAPES])
def test_every_tile_config_and_the_simt_path_equal_conv2d(emulated, index):
    act, packed, wq, wtab, geometry, expected = _operands(SHAPES[index], seed=index, extra_k_words=8 * (index % 5 == 4))
    for config in range(NUM_CONFIGS):
        runs = {1: _at_offset(act, 1)}  # 8-byte copies from an address that 16-byte ones could not use
        if act.shape[-1] % 2 == 0:
            runs[2] = _at_offset(act, 0)
        for avec, a in runs.items():
            out = emulated.conv_mma(a, wq, wtab, geometry, config, avec, seed=index)
            assert torch.equal(out, expected), f"tensor cores, config {config}, {8 * avec}-byte copies"
    assert torch.equal(emulated.conv_simt(act, packed, geometry, seed=index), expected), "CUDA cores"


@pytest.mark.parametrize("index", [1, 9, 12], ids=[_shape_id(FIXED_SHAPES[i]) for i in (1, 9, 12)])
def test_fused_epilogue_equals_the_cpu_kernels_bit_for_bit(emulated, index):
    """Folded BN (one FMA), residual add, PReLU or clamp in the CUDA kernels' store: the CPU kernel's float32 steps."""
    n, c, h, w, o, kh, kw, sh, sw, ph, pw = FIXED_SHAPES[index]
    act, packed, wq, wtab, geometry, _ = _operands(FIXED_SHAPES[index], seed=index, garbage_tail=False)
    gen = torch.Generator().manual_seed(index)
    scale, bias, slopes = (torch.randn(o, generator=gen) for _ in range(3))
    residual = torch.randn(n, o, geometry["OH"], geometry["OW"], generator=gen)
    flat = residual.view(-1)
    flat[::13], flat[1::17], flat[2::19], flat[3::23] = float("nan"), float("inf"), -float("inf"), -0.0
    for extra in ({"prelu_weight": slopes}, {"clamp": (-1.5, 2.0)}, {"prelu_weight": slopes[:1]}, {}):
        epilogue = {"scale": scale, "bias": bias, "residual": residual, **extra}
        cpu = zk.binary_conv2d(act, packed, o, c, (kh, kw), (sh, sw), (ph, pw), **epilogue)
        for config in range(NUM_CONFIGS):
            got = emulated.conv_mma(act, wq, wtab, geometry, config, 1, seed=config, epilogue=epilogue)
            torch.testing.assert_close(got, cpu, rtol=0, atol=0, equal_nan=True, msg=f"config {config}, {list(extra)}")
        got = emulated.conv_simt(act, packed, geometry, epilogue=epilogue)
        torch.testing.assert_close(got, cpu, rtol=0, atol=0, equal_nan=True, msg=f"CUDA cores, {list(extra)}")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sign_and_pack_equals_the_cpu_packer(emulated, dtype, layout):
    gen = torch.Generator().manual_seed(3)
    for n, c, h, w in ((2, 1, 5, 7), (3, 65, 4, 9), (1, 130, 6, 5), (2, 300, 3, 3), (1, 64, 1, 1), (2, 31, 3, 2)):
        x = with_ties(torch.randn(n, c, h, w, generator=gen), gen).to(dtype)
        flat = x.view(-1)
        flat[::17], flat[5::23], flat[7::29] = float("nan"), float("inf"), -float("inf")
        for threshold in (None, torch.randn(c, generator=gen), torch.randn(n, c, generator=gen)):
            if threshold is not None:
                threshold = threshold.to(dtype)
                x[:, :, 0, 0] = threshold  # x == threshold: a tie, which packs to +1
                threshold.view(-1)[::11] = float("nan")
            expected = zk.pack_activations(x, threshold)
            for max_blocks in (1 << 20, 3, 1):  # fewer CTAs than words: the grid-stride loops
                got = emulated.pack(in_layout(x, layout), threshold, max_blocks, seed=max_blocks)
                assert torch.equal(got, expected), (n, c, h, w, threshold is not None, max_blocks)


# (description, text in binary_conv_cuda.cu, its replacement): each breaks the kernels in a way a GPU would show.
MUTANTS = [
    ("A fragment rows swapped",
     "a[1] = As[(mt * 16 + 8) * kRowU32 + ks * 8];", "a[1] = As[(mt * 16) * kRowU32 + ks * 8 + 4];"),
    ("waits for one stage too few", "cp_async_wait<kStages - 2>();", "cp_async_wait<kStages - 1>();"),
    ("no barrier before reading a stage",
     "cp_async_wait<kStages - 2>();\n    __syncthreads();", "cp_async_wait<kStages - 2>();"),
    ("tail bits counted in S_a", "m0w = (w0 % CW == CW - 1) ? tail_half : ~0u;", "m0w = ~0u;"),
    ("padding taps not zero-filled", "src, ok ? 8 * AVEC : 0);", "src, 8 * AVEC);"),
    ("shared memory sized without the per-row arrays",
     "kRowU32 * sizeof(u32) + BM * (sizeof(int64_t) + 3 * sizeof(int));", "kRowU32 * sizeof(u32);"),
    ("clamp drops NaN (fmaxf)", "v = v < p.lo ? p.lo : v;", "v = fmaxf(v, p.lo);"),
    ("ballot halves swapped",
     "static_cast<u64>(lo) | (static_cast<u64>(hi) << 32)", "static_cast<u64>(hi) | (static_cast<u64>(lo) << 32)"),
]  # fmt: skip


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_the_emulator_fails_a_broken_kernel(tmp_path, mutant):
    _require_compiler()
    _, old, new = mutant
    source = KERNEL_SOURCE.read_text()
    assert source.count(old) == 1, f"the mutant's target is no longer in binary_conv_cuda.cu: {old!r}"
    (tmp_path / KERNEL_SOURCE.name).write_text(source.replace(old, new))
    broken = EmulatedKernels(build(tmp_path, tmp_path / KERNEL_SOURCE.name))
    failures = 0
    for index in (1, 5, 9, 11):  # C = 130, 65, 200, 640: tails, padding, several words per tap
        act, packed, wq, wtab, geometry, expected = _operands(FIXED_SHAPES[index], seed=index)
        x = torch.randn(2, 65, 3, 4).contiguous(memory_format=torch.channels_last)  # the ballot pack path
        residual = torch.full_like(expected, float("nan"))
        epilogue = {"scale": torch.full((expected.shape[1],), 0.5), "bias": torch.ones(expected.shape[1]),
                    "residual": residual, "clamp": (-1.0, 1.0)}  # fmt: skip
        try:
            conv_ok = torch.equal(broken.conv_mma(act, wq, wtab, geometry, 2, 1, seed=7), expected)
            pack_ok = torch.equal(broken.pack(x, None), zk.pack_activations(x))
            nan_kept = broken.conv_simt(act, packed, geometry, epilogue=epilogue).isnan().all()
        except AssertionError:  # the emulator itself refused (hazard, bad copy, deadlock)
            conv_ok = pack_ok = nan_kept = False
        failures += not (conv_ok and pack_ok and nan_kept)
    assert failures > 0, f"mutant '{mutant[0]}' passed: the emulator would not notice this bug"
