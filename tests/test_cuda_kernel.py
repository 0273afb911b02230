"""The CUDA binary-conv extension (zoo/kernels/cuda): compilation, algebra, and exactness on a GPU.

- Without a GPU (runs everywhere nvcc is installed): the kernels compile for sm_80 and sm_90, their PTX and SASS use
  the b1 ``mma ... .and.popc`` and never ``.xor.popc`` (not valid on sm_90); the weight tables and the AND-popcount
  formula ``dot = 4 P - 2 S_a - 2 S_w + C * valid_taps`` (evaluated with torch ops) equal F.conv2d; the extension
  builds and links through ``torch.utils.cpp_extension`` (slow).
- With a GPU (compute capability 8.x or 9.0): sign-and-pack equals the CPU packer bit for bit, and the tensor-core and
  CUDA-core convolutions equal F.conv2d on ±1 tensors and the CPU kernel on the same packed operands, exactly.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_inputs import LAYOUTS as ALL_LAYOUTS
from kernel_inputs import in_layout, with_ties

import zoo.kernels as zk
from zoo.kernels import cuda as zkc
from zoo.kernels.cuda import _build as cuda_build

CUDA_DIR = Path(zkc.__file__).resolve().parent
KERNEL_SOURCE = CUDA_DIR / "binary_conv_cuda.cu"
AND_MMA = "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc"
ARCHS = ("80", "90")
LAYOUTS = [k for k in ALL_LAYOUTS if k != "misaligned"]


# ---------------------------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------------------------


def _sign(t: torch.Tensor) -> torch.Tensor:
    """The zoo's binarization: +1 where t >= 0 (so -0.0 -> +1), else -1 (NaN -> -1), as float32."""
    return torch.where(t >= 0, 1.0, -1.0).float()


def _reference(x: torch.Tensor, w: torch.Tensor, stride, padding) -> torch.Tensor:
    """F.conv2d on the ±1 tensors on the CPU (float32 sums of ±1 are exact)."""
    return F.conv2d(_sign(x.detach().cpu()), _sign(w.detach().cpu()), stride=stride, padding=padding)


def _tail_mask(c: int) -> int:
    """int64 mask of the bits past channel c in the last word (0 when c is a multiple of 64)."""
    t = c % 64
    return 0 if t == 0 else ~((1 << t) - 1)


def _bits(words: torch.Tensor, channels: int) -> torch.Tensor:
    """int64 [..., CW] -> 0/1 float64 [..., channels]."""
    b = (words.unsqueeze(-1) >> torch.arange(64)) & 1
    return b.reshape(*words.shape[:-1], -1)[..., :channels].double()


# ---------------------------------------------------------------------------------------------------------------
# (a) Compilation, no GPU needed.
# ---------------------------------------------------------------------------------------------------------------


def _find_tool(name: str) -> str | None:
    candidates = [shutil.which(name)]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / name))
    try:  # triton wheels bundle cuobjdump / nvdisasm
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name))
    except Exception:
        pass
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


NVCC = _find_tool("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (no CUDA toolkit on PATH or CUDA_HOME)")


def _nvcc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [NVCC, "-std=c++17", "-O3", f"-I{CUDA_DIR}", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    assert not re.search(r"\berror\b", proc.stderr, re.IGNORECASE), proc.stderr
    return proc


@needs_nvcc
def test_nvcc_compiles_for_sm80_and_sm90_with_and_popc_only(tmp_path):
    """The .cu translation unit (no torch headers) compiles to SASS for sm_80 and sm_90 in one nvcc call, with the
    build's own flags; the PTX of both targets holds the b1 AND-popcount MMA and no XOR-popcount MMA; so does the
    SASS (BMMA.168256.AND.POPC) when a cuobjdump is available."""
    obj = tmp_path / "binary_conv_cuda.o"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    # --keep leaves each target's PTX beside the object: one nvcc run instead of three
    proc = _nvcc([*gencode, "-Xptxas", "-v", "--keep", "-c", str(KERNEL_SOURCE), "-o", str(obj)], tmp_path)
    assert obj.stat().st_size > 0
    for arch in ARCHS:  # ptxas assembled the tensor-core kernels for both targets
        assert re.search(rf"conv_mma_kernel.*for 'sm_{arch}'", proc.stderr), f"no conv_mma_kernel for sm_{arch}"

    for arch in ARCHS:
        ptx = (tmp_path / f"{KERNEL_SOURCE.stem}.compute_{arch}.ptx").read_text()
        assert f".target sm_{arch}" in ptx
        assert ptx.count(AND_MMA) >= 1, f"no b1 AND-popcount MMA in the compute_{arch} PTX"
        assert ".xor.popc" not in ptx, f"XOR-popcount MMA in the compute_{arch} PTX"
        assert "cp.async" in ptx

    cuobjdump = _find_tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("PTX checked; no cuobjdump available to inspect the SASS")
    sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, timeout=120)
    assert sass.returncode == 0, sass.stderr
    sections = re.split(r"arch = sm_", sass.stdout)[1:]
    found = {s[:2]: s for s in sections}
    assert sorted(found) == sorted(ARCHS), f"SASS sections: {sorted(found)}"
    for arch, text in found.items():
        assert "BMMA.168256.AND.POPC" in text, f"no BMMA AND.POPC in the sm_{arch} SASS"
        assert "XOR.POPC" not in text, f"BMMA XOR.POPC in the sm_{arch} SASS"


@needs_nvcc
@pytest.mark.slow
def test_extension_builds_and_links_without_gpu(monkeypatch, tmp_path):
    """The whole extension (binding + kernels) builds through torch.utils.cpp_extension and imports, GPU or not."""
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cuda_build, "_state", {})
    ext = cuda_build.load_extension(force=True)
    assert ext is not None, cuda_build.load_error()
    assert ext.num_configs() == 4
    for name in ("pack_activations", "conv_mma", "conv_simt", "pick_config", "config_name"):
        assert hasattr(ext, name)
    for conv in (ext.conv_mma, ext.conv_simt):  # the fused epilogue's keywords
        assert all(k in conv.__doc__ for k in ("scale", "bias", "residual", "prelu_weight", "clamp_min", "clamp_max"))
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        ext.pack_activations(torch.randn(1, 3, 2, 2), None)
    with pytest.raises(RuntimeError, match="CUDA int64"):
        ext.conv_simt(
            torch.zeros(1, 2, 2, 1, dtype=torch.int64),
            torch.zeros(1, 1, 1, 1, dtype=torch.int64),
            1,
            3,
            1,
            1,
            1,
            1,
            0,
            0,
        )


# ---------------------------------------------------------------------------------------------------------------
# CPU checks of the tables and of the AND-popcount algebra the tensor-core kernel evaluates.
# ---------------------------------------------------------------------------------------------------------------


def _random_packed_weights(o, c, kh, kw, gen, garbage_tail=True):
    w = torch.randn(o, c, kh, kw, generator=gen)
    packed = zk.pack_weights(w)
    if garbage_tail and c % 64:
        packed = packed.clone()
        packed[..., -1] |= _tail_mask(c)  # bits past C must be ignored
    return w, packed


@pytest.mark.parametrize("c", [1, 63, 64, 65, 130, 300])
def test_prepare_weights_tables(c):
    gen = torch.Generator().manual_seed(c)
    for kh, kw in ((1, 1), (3, 3), (2, 5)):
        w, packed = _random_packed_weights(7, c, kh, kw, gen)
        wq, wtab = zkc.prepare_weights(packed, c)
        cw, taps = (c + 63) // 64, kh * kw
        kp = (taps * cw + 7) // 8 * 8
        assert wq.dtype == torch.int64 and wq.shape == (7, kp) and wq.is_contiguous()
        assert wtab.dtype == torch.int32 and wtab.shape == (7, (kh + 1) * (kw + 1)) and wtab.is_contiguous()
        assert torch.equal(wq[:, taps * cw :], torch.zeros_like(wq[:, taps * cw :]))  # K padding
        clean = zk.pack_weights(w).reshape(7, taps * cw)
        assert torch.equal(wq[:, : taps * cw], clean)  # OHWI order, tail bits cleared
        pops = (w >= 0).sum(1)  # [O, KH, KW]: +1 weights per tap
        tab = wtab.reshape(7, kh + 1, kw + 1)
        for i in range(kh + 1):
            for j in range(kw + 1):
                assert torch.equal(tab[:, i, j].long(), pops[:, :i, :j].sum((1, 2)))


def _and_popcount_model(act, wq, wtab, o, c, kh, kw, stride, padding):
    """The tensor-core kernel's arithmetic with torch ops: P and S_a from 0/1 bit tensors (padding bits 0, tail bits
    masked), S_w and valid_taps from the prefix table over the in-image tap rectangle."""
    n, h, w, cw = act.shape
    a = _bits(act, c).permute(0, 3, 1, 2)  # 0/1 (N, C, H, W); the tail bits past C are dropped here
    taps = kh * kw
    wb = _bits(wq[:, : taps * cw].reshape(o, kh, kw, cw), c).permute(0, 3, 1, 2)
    p = F.conv2d(a, wb, stride=stride, padding=padding)  # popc(a AND w), zero padding
    s_a = F.conv2d(a, torch.ones(1, c, kh, kw, dtype=torch.float64), stride=stride, padding=padding)
    oh, ow = p.shape[2], p.shape[3]
    tab = wtab.reshape(o, kh + 1, kw + 1).double()
    out = torch.empty(n, o, oh, ow, dtype=torch.float64)
    for y in range(oh):
        ih0 = y * stride - padding
        kh0 = min(max(0, -ih0), kh)
        kh1 = max(kh0, min(kh, h - ih0))
        for x in range(ow):
            iw0 = x * stride - padding
            kw0 = min(max(0, -iw0), kw)
            kw1 = max(kw0, min(kw, w - iw0))
            s_w = tab[:, kh1, kw1] - tab[:, kh0, kw1] - tab[:, kh1, kw0] + tab[:, kh0, kw0]
            valid = (kh1 - kh0) * (kw1 - kw0)
            out[:, :, y, x] = 4 * p[:, :, y, x] - 2 * s_a[:, :, y, x] - 2 * s_w + c * valid
    return out.float()


def test_and_popcount_formulation_matches_conv2d():
    """dot = 4 P - 2 S_a - 2 S_w + C * valid_taps with zero-padded activation bits equals conv2d(sign x, sign w)."""
    rng = random.Random(11)
    gen = torch.Generator().manual_seed(11)
    for _ in range(30):
        c, o = rng.choice([1, 3, 63, 64, 65, 130]), rng.choice([1, 5, 16])
        k = rng.choice([1, 2, 3, 5])
        s, p = rng.choice([1, 2]), rng.choice([0, 1, 2, 3])
        n, h, w = rng.randint(1, 3), rng.randint(1, 9), rng.randint(1, 9)
        if h + 2 * p < k or w + 2 * p < k:
            continue
        x = with_ties(torch.randn(n, c, h, w, generator=gen), gen)
        wt, packed = _random_packed_weights(o, c, k, k, gen)
        act = zk.pack_activations(x)
        if c % 64:
            act[..., -1] |= _tail_mask(c)
        wq, wtab = zkc.prepare_weights(packed, c)
        got = _and_popcount_model(act, wq, wtab, o, c, k, k, s, p)
        assert torch.equal(got, _reference(x, wt, s, p)), (n, c, h, w, o, k, s, p)


def test_no_cuda_means_no_build(monkeypatch):
    """Without CUDA the extension is neither built nor loaded, and the CPU API is untouched."""
    monkeypatch.delenv("ZOO_DISABLE_KERNELS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda_build, "_state", {})
    monkeypatch.setattr(cuda_build, "build", lambda *a, **k: pytest.fail("build attempted without CUDA"))
    assert cuda_build.load_extension() is None
    assert not zkc.cuda_kernel_available()
    assert not zkc.device_supported()
    assert "is_available" in (zkc.cuda_kernel_unavailable_reason() or "")
    x = torch.randn(1, 5, 4, 4)
    with pytest.raises(ValueError, match="CUDA"):
        zkc.cuda_pack_activations(x)


@pytest.mark.parametrize("capability", [(7, 5), (10, 0), (12, 0)])
def test_a_gpu_without_code_in_the_build_is_refused_by_name(monkeypatch, capability):
    """The build holds sm_80 and sm_90 SASS and no PTX: other GPUs get a clear error, not a failed launch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(zkc, "load_extension", lambda: pytest.fail("extension loaded for an unsupported GPU"))
    with pytest.raises(RuntimeError, match=rf"compute capability {capability[0]}\.{capability[1]}.*binary_conv2d"):
        zkc._ext(torch.device("cuda", 0))


def test_gpu_check_verdict_and_printing_on_hand_made_reports(capsys):
    """scripts/gpu_check.py has never run on a GPU here: its pass/fail logic is checked on hand-made reports."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    exact = {"layer": "s2", "batch": 256, "exact_vs_fp32_conv": True, "exact_simt": True, "exact_end_to_end": True}
    good = {"tests": {"returncode": 0}, "end_to_end": {"same_prediction_as_fake_quant": True}, "bench": [exact]}
    assert gpu_check.verdict(good)
    assert gpu_check.verdict({**good, "bench": [exact, {"layer": "s4", "batch": 256, "skipped": "time budget"}]})
    assert gpu_check.verdict({"tests": {"returncode": 0}})  # --skip-bench
    assert not gpu_check.verdict({**good, "end_to_end": {"error": "RuntimeError: boom"}})
    assert not gpu_check.verdict({**good, "end_to_end": {"same_prediction_as_fake_quant": False}})
    assert not gpu_check.verdict({**good, "tests": {"returncode": 1}})
    assert not gpu_check.verdict({**good, "bench": [{**exact, "exact_simt": False}]})
    assert not gpu_check.verdict({**good, "bench": [{"layer": "s3", "batch": 1, "error": "CUDA error"}]})
    # its printing, on the shapes its sections produce (a GPU run must not end in a KeyError)
    t = {"median_us": 10.0, "min_us": 9.0}
    e2e = {
        "batch": 1,
        "fake_quant": {"resnet18_sdbnn": {"max_abs_logit_diff": 1e-6, "same_prediction": True}},
        "eager": {"resnet18_sdbnn packed": t, "torchvision resnet18 fp16 channels_last": t},
        "graph": {"resnet18_sdbnn packed": t, "torchvision resnet18 fp16 channels_last": {"error": "capture"}},
    }
    gpu_check._print_end_to_end(e2e)
    timings = {"cudnn_fp16": t, "binary_conv": t, "pack": t, "binary_pack_plus_conv": t}
    measured = {
        **exact,
        "eager": timings,
        "speedup_conv": 1.0,
        "speedup_end_to_end": 1.0,
        "binary_tops": 1.0,
        "binary_gbps": 1.0,
        "auto_config": "bm32",
        "best_config": "bm32",
        "best_config_us": 1.0,
    }
    gpu_check._print_table(
        [measured, {"layer": "s4", "batch": 1, "skipped": "time"}, {"layer": "s4", "batch": 2, "error": "boom"}]
    )
    printed = capsys.readouterr().out
    assert "resnet18_sdbnn packed" in printed and "capture" in printed and "skipped" in printed and "boom" in printed


# ---------------------------------------------------------------------------------------------------------------
# (b) GPU correctness.
# ---------------------------------------------------------------------------------------------------------------

_HAS_GPU = torch.cuda.is_available()
_GPU_REASON = (
    "no CUDA device: torch.cuda.is_available() is False"
    if not _HAS_GPU
    else f"GPU compute capability {torch.cuda.get_device_capability()} has no sm_80 / sm_90 code in this build"
)
needs_gpu = pytest.mark.skipif(not (_HAS_GPU and zkc.device_supported()), reason=_GPU_REASON)
DEV = "cuda"


@pytest.fixture(scope="module")
def ext():
    if not (_HAS_GPU and zkc.device_supported()):
        pytest.skip(_GPU_REASON)
    module = cuda_build.load_extension()
    assert module is not None, f"CUDA extension failed to build: {cuda_build.load_error()}"
    return module


def _conv_cases(count: int, seed: int):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        c = rng.choice([1, 3, 63, 64, 65, 127, 128, 130, 256, 300]) if len(cases) % 2 == 0 else rng.randint(1, 300)
        o = rng.choice([1, 3, 8, 16, 17, 24, 33, 64, 70, 128, 130])
        k = rng.choice([1, 3, 3])
        s, p = rng.choice([1, 2]), rng.choice([0, 1, 1])
        n, h, w = rng.randint(1, 8), rng.randint(1, 30), rng.randint(1, 30)
        if h + 2 * p < k or w + 2 * p < k or n * h * w * c * o * k * k > 6e7:
            continue
        cases.append((n, c, h, w, o, k, s, p, LAYOUTS[len(cases) % len(LAYOUTS)]))
    return cases


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pack_matches_cpu(ext, dtype, layout):
    gen = torch.Generator().manual_seed(1)
    for n, c, h, w in ((2, 1, 5, 7), (3, 65, 4, 9), (1, 130, 6, 5), (2, 300, 3, 3), (1, 64, 1, 1)):
        x = with_ties(torch.randn(n, c, h, w, generator=gen), gen).to(dtype)
        x.view(-1)[::17] = float("nan")
        for tau in (None, 0.25, torch.randn(c, generator=gen).to(dtype), torch.randn(n, c, generator=gen).to(dtype)):
            if isinstance(tau, torch.Tensor):
                x[:, :, 0, 0] = tau  # exact ties with the threshold: bit 1
            expected = zk.pack_activations(x, tau)
            xg = in_layout(x.to(DEV), layout)
            taug = tau.to(DEV) if isinstance(tau, torch.Tensor) else tau
            got = zkc.cuda_pack_activations(xg, taug)
            assert got.device.type == "cuda" and got.dtype == torch.int64 and got.shape == expected.shape
            assert torch.equal(got.cpu(), expected), (n, c, h, w, layout, dtype, tau)


@needs_gpu
def test_random_shapes_match_conv2d_and_cpu_kernel(ext):
    gen = torch.Generator().manual_seed(0)
    for n, c, h, w, o, k, s, p, layout in _conv_cases(60, seed=1):
        x = with_ties(torch.randn(n, c, h, w, generator=gen), gen)
        wt = with_ties(torch.randn(o, c, k, k, generator=gen), gen)
        packed = zk.pack_weights(wt)
        ref = _reference(x, wt, s, p)
        what = f"N={n} C={c} {h}x{w} O={o} k={k} s={s} p={p} {layout}"
        xg = in_layout(x.to(DEV), layout)
        y = zkc.cuda_binary_conv2d(xg, packed, o, c, k, stride=s, padding=p)
        assert y.device.type == "cuda" and y.dtype == torch.float32 and y.shape == ref.shape, what
        assert y.is_contiguous(memory_format=torch.channels_last), what
        assert torch.equal(y.cpu(), ref), f"tensor-core path: {what}"
        y_simt = zkc.cuda_binary_conv2d(xg, packed.to(DEV), o, c, k, stride=s, padding=p, algo="simt")
        assert torch.equal(y_simt.cpu(), ref), f"CUDA-core path: {what}"
        # the same packed operands through the CPU kernel
        act = zkc.cuda_pack_activations(xg)
        assert torch.equal(act.cpu(), zk.pack_activations(x)), what
        y_cpu = zk.binary_conv2d(act.cpu(), packed, o, c, k, stride=s, padding=p)
        assert torch.equal(zkc.cuda_binary_conv2d(act, packed, o, c, k, stride=s, padding=p).cpu(), y_cpu), what


@needs_gpu
@pytest.mark.parametrize("config", [0, 1, 2, 3])
def test_every_tile_config(ext, config):
    """Each tensor-core tile config, with 16-byte (even CW, aligned) and 8-byte (odd CW or misaligned) gathers."""
    gen = torch.Generator().manual_seed(config)
    shapes = [
        (2, 64, 13, 11, 70, 3, 1, 1),
        (1, 128, 9, 9, 130, 3, 2, 1),
        (3, 130, 7, 10, 33, 3, 1, 1),
        (2, 256, 6, 6, 64, 1, 2, 0),
        (1, 300, 5, 8, 17, 3, 2, 0),
        (4, 3, 16, 16, 8, 3, 1, 1),
    ]
    for n, c, h, w, o, k, s, p in shapes:
        x = torch.randn(n, c, h, w, generator=gen)
        wt = torch.randn(o, c, k, k, generator=gen)
        packed = zk.pack_weights(wt).to(DEV)
        ref = _reference(x, wt, s, p)
        act = zkc.cuda_pack_activations(x.to(DEV))
        y = zkc.cuda_binary_conv2d(act, packed, o, c, k, stride=s, padding=p, config=config)
        assert torch.equal(y.cpu(), ref), (config, n, c, h, w, o, k, s, p)
        buf = torch.zeros(act.numel() + 1, dtype=torch.int64, device=DEV)  # 8-byte aligned, not 16
        buf[1:] = act.reshape(-1)
        shifted = buf[1:].view(act.shape)
        y2 = zkc.cuda_binary_conv2d(shifted, packed, o, c, k, stride=s, padding=p, config=config)
        assert torch.equal(y2.cpu(), ref), ("misaligned", config, n, c, h, w, o, k, s, p)


@needs_gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_resnet_stage_shapes(ext, batch):
    """ResNet-18 3x3 layer shapes (stride 1 and 2), where the tiles are full."""
    gen = torch.Generator().manual_seed(batch)
    for hw, c, o, s in [
        (56, 64, 64, 1),
        (56, 64, 128, 2),
        (28, 128, 128, 1),
        (28, 128, 256, 2),
        (14, 256, 256, 1),
        (14, 256, 512, 2),
        (7, 512, 512, 1),
        (32, 16, 16, 1),
        (16, 16, 32, 2),
    ]:
        x = torch.randn(batch, c, hw, hw, generator=gen)
        wt = torch.randn(o, c, 3, 3, generator=gen)
        packed = zk.pack_weights(wt)
        xg = x.to(DEV).half().contiguous(memory_format=torch.channels_last)
        ref = _reference(x.half(), wt, s, 1)
        for algo in ("mma", "simt"):
            y = zkc.cuda_binary_conv2d(xg, packed, o, c, 3, s, 1, algo=algo)
            assert torch.equal(y.cpu(), ref), (algo, batch, hw, c, o, s)


@needs_gpu
def test_thresholds_and_tail_bits(ext):
    gen = torch.Generator().manual_seed(5)
    n, c, o = 3, 70, 12
    x = torch.randn(n, c, 9, 8, generator=gen)
    wt = torch.randn(o, c, 3, 3, generator=gen)
    packed = zk.pack_weights(wt)
    per_channel = torch.randn(c, generator=gen) * 0.5
    x[:, :, 0, 0] = per_channel
    s = torch.rand(n, c, generator=gen)
    x[:, :, 1, 1] = -s
    xg = x.to(DEV)
    for tau in (per_channel, -s, 0.25):
        taug = tau.to(DEV) if isinstance(tau, torch.Tensor) else tau
        for algo in ("mma", "simt"):
            y = zkc.cuda_binary_conv2d(xg, packed, o, c, 3, 1, 1, threshold=taug, algo=algo)
            assert torch.equal(y.cpu(), zk.binary_conv2d(x, packed, o, c, 3, 1, 1, threshold=tau)), (algo, tau)
    # bits past C in packed activations and weights are ignored by both paths
    act = zkc.cuda_pack_activations(xg)
    dirty_act, dirty_w = act.clone(), packed.clone()
    dirty_act[..., -1] |= _tail_mask(c)
    dirty_w[..., -1] |= _tail_mask(c)
    ref = _reference(x, wt, 2, 1)
    for algo in ("mma", "simt"):
        y = zkc.cuda_binary_conv2d(dirty_act, dirty_w, o, c, 3, 2, 1, algo=algo)
        assert torch.equal(y.cpu(), ref), algo


@needs_gpu
def test_tie_rule_and_edge_sizes(ext):
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf")]).reshape(1, 7, 1, 1)
    bits = zk.unpack_activations(zkc.cuda_pack_activations(x.to(DEV)).cpu(), 7).flatten()
    assert torch.equal(bits, torch.tensor([1.0, 1, 1, -1, -1, 1, -1]))
    gen = torch.Generator().manual_seed(9)
    # padding larger than the kernel (output pixels that see only padding), 1x1 inputs, a single output channel
    for n, c, h, w, o, k, s, p in [(2, 5, 1, 1, 1, 3, 1, 1), (1, 64, 3, 3, 9, 3, 1, 3), (1, 65, 2, 7, 3, 1, 2, 2)]:
        x = torch.randn(n, c, h, w, generator=gen)
        wt = torch.randn(o, c, k, k, generator=gen)
        for algo in ("mma", "simt"):
            y = zkc.cuda_binary_conv2d(x.to(DEV), zk.pack_weights(wt), o, c, k, s, p, algo=algo)
            assert torch.equal(y.cpu(), _reference(x, wt, s, p)), (algo, n, c, h, w, o, k, s, p)
    pw = zk.pack_weights(torch.randn(4, 8, 3, 3))
    assert zkc.cuda_binary_conv2d(torch.randn(0, 8, 5, 5, device=DEV), pw, 4, 8, 3, 1, 1).shape == (0, 4, 5, 5)


@needs_gpu
def test_weight_preparation_is_cached_and_invalidated(ext):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 6, 6, generator=gen)
    wt = torch.randn(8, 40, 3, 3, generator=gen)
    packed = zk.pack_weights(wt)
    y1 = zkc.cuda_binary_conv2d(x.to(DEV), packed, 8, 40, 3, 1, 1)
    assert torch.equal(y1.cpu(), _reference(x, wt, 1, 1))
    packed.copy_(zk.pack_weights(-wt))  # in-place edit: the cached preparation must not be reused
    y2 = zkc.cuda_binary_conv2d(x.to(DEV), packed, 8, 40, 3, 1, 1)
    assert torch.equal(y2.cpu(), _reference(x, -wt, 1, 1))


@needs_gpu
def test_unsupported_configurations_raise(ext):
    x = torch.randn(1, 8, 6, 6, device=DEV)
    pw = zk.pack_weights(torch.randn(4, 8, 3, 3))
    with pytest.raises(NotImplementedError, match="dilation"):
        zkc.cuda_binary_conv2d(x, pw, 4, 8, 3, dilation=2)
    with pytest.raises(NotImplementedError, match="groups"):
        zkc.cuda_binary_conv2d(x, pw, 4, 8, 3, groups=2)
    with pytest.raises(ValueError, match="CUDA"):
        zkc.cuda_binary_conv2d(x.cpu(), pw, 4, 8, 3)
    with pytest.raises(ValueError, match="in_channels"):
        zkc.cuda_binary_conv2d(x, pw, 4, 9, 3)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        zkc.cuda_binary_conv2d(torch.randn(1, 8, 1, 1, device=DEV), pw, 4, 8, 3)
    with pytest.raises(ValueError, match="algo"):
        zkc.cuda_binary_conv2d(x, pw, 4, 8, 3, algo="xor")
    with pytest.raises(RuntimeError, match="tile config"):
        zkc.cuda_binary_conv2d(x, pw, 4, 8, 3, config=7)


@needs_gpu
def test_epilogue_on_the_gpu_equals_the_cpu_kernels(ext):
    """binary_conv2d's epilogue (affine, residual, PReLU, clamp) on CUDA tensors gives the CPU kernels' result."""
    gen = torch.Generator().manual_seed(11)
    x, wt = torch.randn(2, 70, 9, 8, generator=gen), torch.randn(33, 70, 3, 3, generator=gen)
    scale, bias, slopes = (torch.randn(33, generator=gen) for _ in range(3))
    residual = torch.randn(2, 33, 5, 4, generator=gen)
    packed = zk.pack_weights(wt)
    for extra in ({"prelu_weight": slopes}, {"clamp": (-1.0, 1.0)}):
        cpu = zk.binary_conv2d(x, packed, 33, 70, 3, 2, 1, scale=scale, bias=bias, residual=residual, **extra)
        on_gpu = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
        gpu = zk.binary_conv2d(
            x.to(DEV), packed, 33, 70, 3, 2, 1, scale=scale.to(DEV), bias=bias.to(DEV), residual=residual.to(DEV),
            **on_gpu,
        )  # fmt: skip
        assert torch.equal(gpu.cpu(), cpu)


@needs_gpu
def test_bench_kernels_gpu_rows(ext):
    """`zoo bench kernels` on a GPU: each ResNet-18 stage conv at batch 1 and 256 and the end-to-end BNN, each beside
    its cuDNN fp16 channels_last baseline."""
    pytest.importorskip("zoo.models")  # registers resnet18_sdbnn (also under gpu_check.py's stub package)
    from zoo.bench import CUDA_BATCHES, _cuda_rows

    rows = _cuda_rows(repeats=3)
    assert len(rows) == (4 + 2) * len(CUDA_BATCHES)  # 4 stage convs, 2 whole BNNs
    for row in rows:
        assert row["ms"] > 0 and row["baseline_ms"] > 0 and "fp16 channels_last" in row["baseline"]


@needs_gpu
@pytest.mark.parametrize("arch", ["resnet20_sdbnn", "resnet18_bireal"])
def test_inference_form_on_the_gpu_matches_the_fake_quant_model(ext, arch):
    """A whole BNN's inference form on the GPU (packed convs, folded BNs, fused residual units, SD-BNN's ASD) predicts
    what its fake-quant model predicts there, logits within float rounding."""
    timm = pytest.importorskip("timm")
    pytest.importorskip("zoo.models")  # registers the architectures (also under gpu_check.py's stub package)
    from zoo.inference import to_inference

    torch.manual_seed(0)
    model = timm.create_model(arch, in_chans=1).eval().to(DEV)
    x = torch.randn(4, 1, 32, 32, device=DEV)
    with torch.inference_mode():
        ref, out = model(x), to_inference(model)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert torch.equal(out.argmax(1), ref.argmax(1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
