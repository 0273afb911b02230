"""The packed binary conv kernels (zoo.kernels) against F.conv2d on ±1 tensors with zero padding.

Every code path this machine can run is checked: the C++ extension's ISAs (scalar, avx2, avx512 VPOPCNTDQ where the
CPU has them, forced through ZOO_KERNEL_ISA) and the pure-PyTorch fallback (ZOO_DISABLE_KERNELS=1). Results are small
integers, so equality is exact (torch.equal). The epilogue affine (scale, bias) rounds once per element, so it is
compared exactly with a float64 reference rounded to float32.
"""

from __future__ import annotations

import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_inputs import LAYOUTS, in_layout, with_ties

import zoo.kernels as zk
from zoo.kernels import _build
from zoo.kernels import binary as kb
from zoo.nn.quantizers import hard_sign

_ISA_OF_BACKEND = {"scalar": "scalar", "avx2": "avx2", "avx512-vpopcntdq": "avx512"}
_KERNEL_ISAS = [_ISA_OF_BACKEND[b] for b in zk.available_isas()]
PATHS = ["scalar", "avx2", "avx512", "torch"]
CHANNELS = [1, 3, 63, 64, 65, 127, 130, 300]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch) -> str:
    """Select one code path through the environment, as a user would."""
    name = request.param
    if name == "torch":
        monkeypatch.setenv("ZOO_DISABLE_KERNELS", "1")
        assert zk.kernel_backend() == "torch-fallback"
    else:
        if name not in _KERNEL_ISAS:
            pytest.skip(f"ISA {name} not available here (available: {_KERNEL_ISAS or 'none'})")
        monkeypatch.delenv("ZOO_DISABLE_KERNELS", raising=False)
        monkeypatch.setenv("ZOO_KERNEL_ISA", name)
        assert zk.kernel_backend() == {"avx512": "avx512-vpopcntdq"}.get(name, name)
    return name


def _reference(x: torch.Tensor, w: torch.Tensor, stride, padding, tau=None) -> torch.Tensor:
    xs = x.float() if tau is None else x.float() - tau
    return F.conv2d(hard_sign(xs.contiguous()), hard_sign(w.float()), stride=stride, padding=padding)


def _random_cases(count: int, seed: int):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        c = rng.choice(CHANNELS) if len(cases) % 2 == 0 else rng.randint(1, 300)
        o = rng.choice([1, 3, 8, 16, 17, 24, 33, 64, 70])
        k = rng.choice([1, 3, 3, 3, 5]) if len(cases) % 10 else 2  # odd kernels, plus an even one now and then
        s, p = rng.choice([1, 2]), rng.choice([0, 1, 1])
        n, h, w = rng.randint(1, 8), rng.randint(1, 30), rng.randint(1, 30)
        if h + 2 * p < k or w + 2 * p < k or n * h * w * c * o * k * k > 4e7:
            continue
        cases.append((n, c, h, w, o, k, s, p, LAYOUTS[len(cases) % len(LAYOUTS)]))
    return cases


def test_random_shapes_match_conv2d(path):
    gen = torch.Generator().manual_seed(0)
    for n, c, h, w, o, k, s, p, layout in _random_cases(40, seed=1):
        x = with_ties(torch.randn(n, c, h, w, generator=gen), gen)
        wt = with_ties(torch.randn(o, c, k, k, generator=gen), gen)
        packed = zk.pack_weights(wt)
        y = zk.binary_conv2d(in_layout(x, layout), packed, o, c, k, stride=s, padding=p)
        ref = _reference(x, wt, s, p)
        assert y.dtype == torch.float32 and y.shape == ref.shape, (y.shape, ref.shape)
        assert torch.equal(y, ref), f"mismatch for N={n} C={c} {h}x{w} O={o} k={k} s={s} p={p} {layout} ({path})"


def test_resnet_stage_shapes(path):
    """Full-size ResNet-18 / ResNet-20 layer shapes (3x3, pad 1, stride 1 and 2), where the SIMD tiles are full."""
    gen = torch.Generator().manual_seed(2)
    for hw, c, o, s in [(56, 64, 64, 1), (28, 64, 128, 2), (7, 512, 512, 1), (28, 16, 16, 1), (14, 16, 32, 2)]:
        if path == "scalar" and c * o > 64 * 128:
            continue  # keep the portable path's share of the runtime small
        x = torch.randn(1, c, hw, hw, generator=gen)
        wt = torch.randn(o, c, 3, 3, generator=gen)
        assert torch.equal(zk.binary_conv2d(x, zk.pack_weights(wt), o, c, 3, s, 1), _reference(x, wt, s, 1))


@pytest.mark.parametrize("c", [64, 128, 320, 2112])
def test_largest_popcounts_do_not_overflow_the_counters(path, c):
    """Every product -1 (x all +1, w all -1): each XOR word is all ones, the largest count the kernel can meet. The
    AVX2 path keeps byte counters that it flushes every 31 words: between taps at 1, 2 and 5 words a tap, within a tap
    at 33 (2112 channels)."""
    x, wt = torch.ones(2, c, 4, 5), -torch.ones(16, c, 3, 3)
    y = zk.binary_conv2d(x, zk.pack_weights(wt), 16, c, 3, 1, 1)
    assert torch.equal(y, _reference(x, wt, 1, 1))
    assert y.min().item() == -9 * c


def _ref_words(bits: torch.Tensor) -> torch.Tensor:
    """Independent packer: bool [..., C] -> int64 words via Python integers."""
    c = bits.shape[-1]
    flat = bits.reshape(-1, c).tolist()
    out = []
    for row in flat:
        words = []
        for i in range(0, c, 64):
            v = sum(1 << b for b, bit in enumerate(row[i : i + 64]) if bit)
            words.append(v - (1 << 64) if v >= 1 << 63 else v)
        out.append(words)
    return torch.tensor(out, dtype=torch.int64).reshape(*bits.shape[:-1], -1)


@pytest.mark.parametrize("c", [1, 63, 64, 65, 130])
def test_weight_packing_layout_and_roundtrip(path, c):
    gen = torch.Generator().manual_seed(c)
    w = with_ties(torch.randn(5, c, 3, 3, generator=gen), gen)
    packed = zk.pack_weights(w)
    assert packed.dtype == torch.int64 and packed.shape == (5, 3, 3, (c + 63) // 64)
    assert torch.equal(packed, _ref_words((w >= 0).permute(0, 2, 3, 1)))  # OHWI, bit c%64 of word c//64, tail 0
    assert torch.equal(zk.unpack_weights(packed, w.shape), hard_sign(w))
    pm = hard_sign(w)
    assert torch.equal(zk.unpack_weights(zk.pack_weights(pm), pm.shape), pm)  # exact inverse on ±1
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        assert torch.equal(zk.pack_weights(w.to(dtype)), zk.pack_weights(w.to(dtype).float()))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_activation_packingin_layout(path, layout):
    gen = torch.Generator().manual_seed(3)
    for c in (1, 65, 130):
        x = with_ties(torch.randn(2, c, 5, 19, generator=gen), gen)
        packed = zk.pack_activations(in_layout(x, layout))
        assert packed.shape == (2, 5, 19, (c + 63) // 64)
        assert torch.equal(packed, _ref_words((x >= 0).permute(0, 2, 3, 1)))
        assert torch.equal(zk.unpack_activations(packed, c), hard_sign(x))


def test_other_float_dtypes(path):
    """Comparisons run in the input's dtype: float64 values that round to -0.0 in float32 still give -1."""
    x = torch.tensor([-1e-300, 1e-300, -0.0, 0.0, -1.0, 2.0], dtype=torch.float64).reshape(1, 6, 1, 1)
    assert torch.equal(zk.unpack_activations(zk.pack_activations(x), 6).flatten(), torch.tensor([-1.0, 1, 1, 1, -1, 1]))
    gen = torch.Generator().manual_seed(4)
    xh = torch.randn(2, 70, 6, 7, generator=gen)
    w = torch.randn(9, 70, 3, 3, generator=gen)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        xd = xh.to(dtype)
        y = zk.binary_conv2d(xd, zk.pack_weights(w), 9, 70, 3, 1, 1)
        ref = F.conv2d(hard_sign(xd).float(), hard_sign(w), padding=1)
        assert torch.equal(y, ref), dtype


def test_tie_rule(path):
    """sign(+0.0) = sign(-0.0) = +1 for activations and weights; NaN activations give -1 (x >= 0 is false)."""
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf")]).reshape(1, 7, 1, 1)
    bits = zk.unpack_activations(zk.pack_activations(x), 7).flatten()
    assert torch.equal(bits, torch.tensor([1.0, 1, 1, -1, -1, 1, -1]))
    w = torch.tensor([0.0, -0.0, 0.0, -0.0, -1.0, 1.0, 0.0]).reshape(1, 7, 1, 1)
    assert torch.equal(zk.unpack_weights(zk.pack_weights(w), w.shape).flatten(), torch.tensor([1.0, 1, 1, 1, -1, 1, 1]))
    y = zk.binary_conv2d(x[:, :4], zk.pack_weights(w[:, :4]), 1, 4, 1)  # (+1, +1, +1, -1) . (+1, +1, +1, +1)
    assert y.item() == 2.0
    zero = torch.zeros(2, 3, 4, 4)
    zero[1] = -0.0
    w3 = -torch.ones(5, 3, 3, 3)
    assert torch.equal(zk.binary_conv2d(zero, zk.pack_weights(w3), 5, 3, 3, 1, 1), _reference(zero, w3, 1, 1))


def test_thresholds(path):
    gen = torch.Generator().manual_seed(5)
    n, c, o = 3, 70, 12
    x = torch.randn(n, c, 9, 8, generator=gen)
    w = torch.randn(o, c, 3, 3, generator=gen)
    packed = zk.pack_weights(w)
    per_channel = torch.randn(c, generator=gen) * 0.5
    x[:, :, 0, 0] = per_channel  # exact ties: x == tau -> +1
    y = zk.binary_conv2d(x, packed, o, c, 3, 1, 1, threshold=per_channel)
    expected = torch.where(x >= per_channel[:, None, None], 1.0, -1.0)
    assert torch.equal(y, F.conv2d(expected, hard_sign(w), padding=1))
    # SD-BNN's ASD: sign(x + s) with a per-sample, per-channel shift s in (0, 1) == threshold -s, bit for bit.
    s = torch.rand(n, c, generator=gen)
    x[:, :, 1, 1] = -s  # x + s == 0 exactly -> +1
    y = zk.binary_conv2d(x, packed, o, c, 3, 2, 1, threshold=-s)
    assert torch.equal(y, F.conv2d(hard_sign(x + s[:, :, None, None]), hard_sign(w), stride=2, padding=1))
    # a float threshold is a per-channel constant, and packing honours thresholds the same way
    assert torch.equal(zk.binary_conv2d(x, packed, o, c, 3, 1, 0, threshold=0.25), _reference(x, w, 1, 0, tau=0.25))
    assert torch.equal(
        zk.pack_activations(x.to(memory_format=torch.channels_last), -s),
        _ref_words((x + s[:, :, None, None] >= 0).permute(0, 2, 3, 1)),
    )


def test_prepacked_activations(path):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 100, 11, 13, generator=gen)
    w = torch.randn(20, 100, 3, 3, generator=gen)
    act = zk.pack_activations(x)
    y = zk.binary_conv2d(act, zk.pack_weights(w), 20, 100, 3, 2, 1)
    assert torch.equal(y, _reference(x, w, 2, 1))


def test_unsupported_configurations_raise(path):
    x = torch.randn(1, 8, 6, 6)
    w = torch.randn(4, 8, 3, 3)
    pw = zk.pack_weights(w)
    with pytest.raises(NotImplementedError, match="dilation"):
        zk.binary_conv2d(x, pw, 4, 8, 3, dilation=2)
    with pytest.raises(NotImplementedError, match="groups"):
        zk.binary_conv2d(x, pw, 4, 8, 3, groups=2)
    with pytest.raises(NotImplementedError, match="same"):
        zk.binary_conv2d(x, pw, 4, 8, 3, padding="same")
    with pytest.raises(ValueError, match="in_channels"):
        zk.binary_conv2d(x, pw, 4, 9, 3)
    with pytest.raises(ValueError, match="packed_weight"):
        zk.binary_conv2d(x, pw, 4, 8, 1)
    with pytest.raises(ValueError, match="packed_weight"):
        zk.binary_conv2d(x, w, 4, 8, 3)  # unpacked float weight
    with pytest.raises(ValueError, match="smaller than the kernel"):
        zk.binary_conv2d(torch.randn(1, 8, 1, 1), pw, 4, 8, 3, padding=0)
    with pytest.raises(ValueError, match="stride"):
        zk.binary_conv2d(x, pw, 4, 8, 3, stride=0)
    with pytest.raises(ValueError, match="threshold"):
        zk.binary_conv2d(x, pw, 4, 8, 3, threshold=torch.zeros(7))
    with pytest.raises(ValueError, match="4-D"):
        zk.binary_conv2d(x[0], pw, 4, 8, 3)
    with pytest.raises(ValueError):
        zk.unpack_weights(pw, (4, 65, 3, 3))
    with pytest.raises(ValueError, match="spatial"):
        zk.binary_conv2d(torch.randn(1, 8, 0, 6), pw, 4, 8, 3, padding=1)


def test_empty_batch(path):
    pw = zk.pack_weights(torch.randn(4, 8, 3, 3))
    assert zk.binary_conv2d(torch.randn(0, 8, 5, 5), pw, 4, 8, 3, 1, 1).shape == (0, 4, 5, 5)


def test_concurrent_calls_from_threads():
    """Four Python threads (the C++ ops release the GIL) give the same results as serial calls."""
    gen = torch.Generator().manual_seed(7)
    jobs = []
    for i in range(8):
        c, o = (64, 64) if i % 2 else (130, 33)
        x = torch.randn(2, c, 14, 14, generator=gen)
        w = torch.randn(o, c, 3, 3, generator=gen)
        jobs.append((x, zk.pack_weights(w), o, c, 1 + i % 2))
    run = [lambda j=j: zk.binary_conv2d(j[0], j[1], j[2], j[3], 3, j[4], 1) for j in jobs]
    serial = [f() for f in run]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda f: f(), run * 2))
            assert all(torch.equal(a, b) for a, b in zip(parallel, serial * 2, strict=True))


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("ZOO_DISABLE_KERNELS", "1")
    assert zk.kernel_backend() == "torch-fallback" and zk.available_isas() == ()
    monkeypatch.delenv("ZOO_DISABLE_KERNELS")
    monkeypatch.setenv("ZOO_KERNEL_ISA", "torch")
    assert zk.kernel_backend() == "torch-fallback"
    monkeypatch.setenv("ZOO_KERNEL_ISA", "bogus")
    with pytest.raises(ValueError, match="ZOO_KERNEL_ISA"):
        zk.kernel_backend()
    with pytest.raises(ValueError):
        zk.set_kernel_isa("bogus")
    monkeypatch.setenv("ZOO_KERNEL_ISA", "auto")
    if zk.available_isas():
        assert zk.kernel_backend() in ("avx512-vpopcntdq", "avx2", "scalar")
        zk.set_kernel_isa("scalar")
        try:
            assert zk.kernel_backend() == "scalar"
            with zk.kernel_isa("torch"):  # a block on another path gives back the choice it found
                assert zk.kernel_backend() == "torch-fallback"
            assert zk.kernel_backend() == "scalar"
        finally:
            zk.set_kernel_isa(None)
    else:
        assert zk.kernel_backend() == "torch-fallback"


def test_build_failure_falls_back_with_one_warning(monkeypatch, tmp_path):
    """An extension that cannot be built: one RuntimeWarning naming the cause, then the fallback's exact results."""
    monkeypatch.delenv("ZOO_DISABLE_KERNELS", raising=False)
    monkeypatch.delenv("ZOO_KERNEL_ISA", raising=False)
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(_build, "_SOURCES", [tmp_path / "missing.cpp"])
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setattr(kb, "_select_memo", {})
    x = torch.randn(1, 5, 4, 4)
    w = torch.randn(3, 5, 3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = zk.binary_conv2d(x, zk.pack_weights(w), 3, 5, 3, 1, 1)
        y2 = zk.binary_conv2d(x, zk.pack_weights(w), 3, 5, 3, 1, 1)
    ours = [c for c in caught if "zoo.kernels" in str(c.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "missing.cpp" in str(ours[0].message) or "could not be built" in str(ours[0].message)
    assert zk.kernel_backend() == "torch-fallback" and zk.kernel_unavailable_reason()
    assert torch.equal(y1, _reference(x, w, 1, 1)) and torch.equal(y2, y1)


def _affine_reference(conv: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv * scale + bias per output channel, rounded once (the product is exact in float64)."""
    return (conv.double() * scale.double()[:, None, None] + bias.double()[:, None, None]).float()


# (N, C, H, W, O, k, stride, padding): O covers every lane block (8, 16, 24, 32 lanes) and partial last blocks.
AFFINE_CASES = [
    (2, 70, 9, 8, 12, 3, 1, 1),
    (1, 64, 14, 14, 64, 3, 2, 1),
    (3, 16, 7, 7, 40, 3, 1, 1),
    (2, 130, 5, 6, 33, 1, 1, 0),
    (1, 8, 6, 5, 8, 3, 1, 1),
    (1, 3, 5, 5, 24, 3, 1, 1),
    (2, 65, 6, 6, 17, 5, 1, 2),
]


def test_scale_bias_epilogue(path):
    gen = torch.Generator().manual_seed(8)
    for n, c, h, w, o, k, s, p in AFFINE_CASES:
        x = torch.randn(n, c, h, w, generator=gen)
        wt = torch.randn(o, c, k, k, generator=gen)
        scale, bias = torch.randn(o, generator=gen), 3 * torch.randn(o, generator=gen)
        scale[0] = 0.0
        packed = zk.pack_weights(wt)
        conv = _reference(x, wt, s, p)
        y = zk.binary_conv2d(x, packed, o, c, k, s, p, scale=scale, bias=bias)
        assert torch.equal(y, _affine_reference(conv, scale, bias)), f"C={c} O={o} k={k} s={s} p={p} ({path})"
        plain = conv * scale[:, None, None] + bias[:, None, None]  # two roundings: within an ulp or so
        torch.testing.assert_close(y, plain, rtol=1e-6, atol=1e-6 * plain.abs().max().item())
        act = zk.pack_activations(x.to(memory_format=torch.channels_last))
        assert torch.equal(zk.binary_conv2d(act, packed, o, c, k, s, p, scale=scale, bias=bias), y)
        scale_only = zk.binary_conv2d(x, packed, o, c, k, s, p, scale=scale)
        assert torch.equal(scale_only, _affine_reference(conv, scale, torch.zeros(o)))
        bias_only = zk.binary_conv2d(x, packed, o, c, k, s, p, bias=bias)
        assert torch.equal(bias_only, _affine_reference(conv, torch.ones(o), bias))


def test_scale_bias_with_thresholds(path):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 70, 9, 8, generator=gen)
    wt = torch.randn(20, 70, 3, 3, generator=gen)
    shift = torch.rand(3, 70, generator=gen)
    scale, bias = torch.randn(20, generator=gen), torch.randn(20, generator=gen)
    y = zk.binary_conv2d(x, zk.pack_weights(wt), 20, 70, 3, 2, 1, threshold=-shift, scale=scale, bias=bias)
    conv = F.conv2d(hard_sign(x + shift[:, :, None, None]), hard_sign(wt), stride=2, padding=1)
    assert torch.equal(y, _affine_reference(conv, scale, bias))


def test_scale_bias_checks(path):
    x = torch.randn(1, 8, 6, 6)
    pw = zk.pack_weights(torch.randn(4, 8, 3, 3))
    ok = torch.ones(4)
    bad = {
        r"scale must have shape \[out_channels\] = \[4\], got \(5,\)": {"scale": torch.ones(5), "bias": ok},
        "bias must have shape": {"scale": ok, "bias": torch.ones(4, 1)},
        "scale must be float32.*float64": {"scale": ok.double()},
        "bias must be float32.*int64": {"bias": torch.ones(4, dtype=torch.int64)},
        "scale is on meta": {"scale": torch.ones(4, device="meta")},
    }
    for message, kwargs in bad.items():
        with pytest.raises(ValueError, match=message):
            zk.binary_conv2d(x, pw, 4, 8, 3, 1, 1, **kwargs)
    with pytest.raises(TypeError, match="scale must be a float32 tensor"):
        zk.binary_conv2d(x, pw, 4, 8, 3, 1, 1, scale=[1.0] * 4)
    if path != "torch":  # the extension checks its own arguments too
        ext = _build.load_extension()
        act, blocked = zk.pack_activations(x), ext.block_weights(pw)
        with pytest.raises(RuntimeError, match="scale must have shape"):
            ext.conv_packed(act, blocked, 4, 8, 3, 3, 1, 1, 1, 1, 0, scale=torch.ones(3))
        with pytest.raises(RuntimeError, match="bias must be float32"):
            ext.binary_conv2d(x, None, blocked, 4, 8, 3, 3, 1, 1, 1, 1, 0, bias=ok.double())


def test_residual_prelu_clamp_epilogue_equals_pytorch_ops(path):
    """affine -> + residual -> PReLU / clamp in the epilogue: bit for bit PyTorch's ops applied one after another,
    on every lane-block size, residuals in either layout, NaN / inf / -0.0 in the residual."""
    gen = torch.Generator().manual_seed(10)
    for i, (n, c, h, w, o, k, s, p) in enumerate(AFFINE_CASES):
        x = torch.randn(n, c, h, w, generator=gen)
        wt = torch.randn(o, c, k, k, generator=gen)
        scale, bias = torch.randn(o, generator=gen), torch.randn(o, generator=gen)
        packed = zk.pack_weights(wt)
        conv = _reference(x, wt, s, p)
        affine = _affine_reference(conv, scale, bias)
        residual = 4 * torch.randn(affine.shape, generator=gen)
        residual.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")])
        if i % 2:
            residual = residual.contiguous(memory_format=torch.channels_last)
        slopes = torch.randn(o, generator=gen) if i % 3 else torch.full((1,), 0.25)
        added = affine + residual
        expected = {
            "add": (dict(residual=residual), added),
            "prelu": (dict(residual=residual, prelu_weight=slopes), F.prelu(added, slopes)),
            "clamp": (dict(residual=residual, clamp=(-1.0, 1.0)), added.clamp(-1.0, 1.0)),
            "prelu only": (dict(prelu_weight=slopes), F.prelu(affine, slopes)),
        }
        for name, (epilogue, want) in expected.items():
            got = zk.binary_conv2d(x, packed, o, c, k, s, p, scale=scale, bias=bias, **epilogue)
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=f"{name}, case {i} ({path})")
        plain = zk.binary_conv2d(x, packed, o, c, k, s, p, residual=residual, clamp=(-0.5, 2.0))
        torch.testing.assert_close(plain, (conv + residual).clamp(-0.5, 2.0), rtol=0, atol=0, equal_nan=True)


def test_residual_epilogue_checks(path):
    x = torch.randn(2, 8, 6, 6)
    pw = zk.pack_weights(torch.randn(4, 8, 3, 3))
    bad = {
        r"residual must have the output's shape \(2, 4, 3, 3\)": {"residual": torch.zeros(2, 4, 6, 6)},
        "residual must be float32": {"residual": torch.zeros(2, 4, 3, 3, dtype=torch.float64)},
        r"prelu_weight needs 1 or 4 \(out_channels\) elements": {"prelu_weight": torch.ones(3)},
        r"clamp must be a \(min, max\) pair": {"clamp": (1.0, -1.0)},
        r"clamp must be a \(min, max\) pair.*0.5": {"clamp": 0.5},
    }
    for message, kwargs in bad.items():
        with pytest.raises(ValueError, match=message):
            zk.binary_conv2d(x, pw, 4, 8, 3, 2, 1, **kwargs)
    with pytest.raises(TypeError, match="residual must be a float32 tensor"):
        zk.binary_conv2d(x, pw, 4, 8, 3, 2, 1, residual=[0.0])
    if path != "torch":
        ext = _build.load_extension()
        blocked = ext.block_weights(pw)
        with pytest.raises(RuntimeError, match="residual must have the output's shape"):
            ext.binary_conv2d(x, None, blocked, 4, 8, 3, 3, 2, 2, 1, 1, 0, residual=torch.zeros(2, 4, 6, 6))
        with pytest.raises(RuntimeError, match="give both clamp bounds"):
            ext.binary_conv2d(x, None, blocked, 4, 8, 3, 3, 2, 2, 1, 1, 0, clamp_min=0.0)


@pytest.mark.parametrize("c", [5, 64, 130])
def test_asd_threshold_in_the_kernel_is_the_se_branch(path, c):
    """SD-BNN's ASD threshold computed inside the kernel's call is the PyTorch SE branch's, bit for bit; where the
    kernel cannot compute it (the PyTorch fallback), asd_weights are refused: the caller passes the threshold."""
    from zoo.nn.self_distribution import activation_shift

    gen = torch.Generator().manual_seed(c)
    x = torch.randn(3, c, 9, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    fc1, fc2 = torch.randn(max(1, c // 8), c, generator=gen), torch.randn(c, max(1, c // 8), generator=gen)
    shift = activation_shift(x, fc1, fc2)[:, :, 0, 0]
    wt = torch.randn(16, c, 3, 3, generator=gen)
    geometry = kb.conv_geometry(zk.pack_weights(wt), 16, c, 3, 1, 1, 1, 1)
    assert kb.fuses_asd_threshold(x, zk.pack_weights(wt)) == (path != "torch")
    assert not kb.fuses_asd_threshold(x.double(), zk.pack_weights(wt))
    if path == "torch":
        with pytest.raises(ValueError, match="pass the computed threshold"):
            kb.run_binary_conv2d(x, zk.pack_weights(wt), 16, c, geometry, asd_weights=(fc1, fc2))
        return
    tau = _build.load_extension().asd_threshold(x, fc1, fc2)
    assert torch.equal(tau, -shift)
    fused = kb.run_binary_conv2d(x, zk.pack_weights(wt), 16, c, geometry, asd_weights=(fc1, fc2))
    reference = zk.binary_conv2d(x, zk.pack_weights(wt), 16, c, 3, 1, 1, threshold=-shift)
    assert torch.equal(fused, reference)


def test_build_directory_follows_the_sources(monkeypatch, tmp_path):
    """The build is keyed on the sources' content, paths and flags: an edited kernel, or one checked out elsewhere,
    gets a fresh build directory."""
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "kernel.cpp"
    source.write_text("int version = 1;")
    monkeypatch.setattr(_build, "_SOURCES", [source])
    first = _build.build_dir()
    assert first.parent == _build.cache_dir() and _build.build_dir() == first
    source.write_text("int version = 2;")
    second = _build.build_dir()
    assert second != first
    monkeypatch.setattr(_build, "_CFLAGS", [*_build._CFLAGS, "-DZOO_TEST"])
    third = _build.build_dir()
    assert third not in (first, second)
    moved = tmp_path / "elsewhere" / "kernel.cpp"  # the same bytes in another checkout: other build commands
    moved.parent.mkdir()
    moved.write_text(source.read_text())
    monkeypatch.setattr(_build, "_SOURCES", [moved])
    assert _build.build_dir() not in (first, second, third)


def test_loaded_extension_comes_from_the_current_sources():
    ext = _build.load_extension() if not _build.kernels_disabled() else None
    if ext is None:
        pytest.skip("the C++ extension is not available here")
    assert Path(ext.__file__).parent == _build.build_dir()


@pytest.mark.skipif(len(_KERNEL_ISAS) < 2, reason="needs two C++ ISA paths on this CPU")
def test_one_packed_weight_serves_every_isa_path_in_turn(monkeypatch):
    """The blocked layout differs per path (AVX2 reads nibble words) and is cached per layout: switching the ISA
    in a running process gives the same exact result with the same packed weight."""
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 70, 9, 9, generator=gen), torch.randn(40, 70, 3, 3, generator=gen)
    packed, want = zk.pack_weights(w), _reference(x, w, 1, 1)
    for isa in [*_KERNEL_ISAS, *_KERNEL_ISAS]:
        monkeypatch.setenv("ZOO_KERNEL_ISA", isa)
        assert torch.equal(zk.binary_conv2d(x, packed, 40, 70, 3, 1, 1), want), isa


@pytest.mark.skipif("avx2" not in _KERNEL_ISAS or len(_KERNEL_ISAS) < 3, reason="needs the AVX2 and AVX-512 paths")
def test_weights_blocked_for_another_path_are_refused():
    ext = _build.load_extension()
    x, packed = torch.randn(1, 8, 5, 5), zk.pack_weights(torch.randn(4, 8, 3, 3))
    blocked = ext.block_weights(packed, ext.isa_code("avx512"))
    with pytest.raises(RuntimeError, match=r"on the avx2 path .*block_weights\(packed, isa\)"):
        ext.binary_conv2d(x, None, blocked, 4, 8, 3, 3, 1, 1, 1, 1, ext.isa_code("avx2"))
    assert ext.weight_layout(ext.isa_code("avx2")) == "nibbles" and ext.weight_layout(ext.isa_code("scalar")) == "words"
