"""oneDNN's channel-blocked stem conv read as it lies: the layout probe, the conv's values, the C++ pool reading the
blocked layout on every ISA path, and the fallbacks where it does not apply."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo
import zoo.kernels as zk
from zoo.kernels import _build
from zoo.kernels.blocked_conv import blocked_conv2d
from zoo.kernels.channels_last import pooled_affine_prelu, unblock

_ISAS = {"scalar": 1, "avx2": 2, "avx512-vpopcntdq": 3}
CPU_PATHS = [name for name in _ISAS if name in zk.available_isas()]
needs_onednn = pytest.mark.skipif(
    not CPU_PATHS or not torch.backends.mkldnn.is_available(), reason="needs the C++ extension and oneDNN"
)


def _blocked(x: torch.Tensor, block: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c // block, block, h, w).permute(0, 1, 3, 4, 2).contiguous()


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (3, 3, 37, 50)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_blocked_stem_conv_is_the_conv_in_a_blocked_layout(shape, channels_last) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 64, 7, 2, 3, bias=False).eval()
    x = torch.randn(shape)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    with torch.no_grad():
        got = blocked_conv2d(conv, x)
        want = conv(x)
    assert got is not None and got.dim() == 5 and got.is_contiguous() and got.shape[4] in (8, 16)
    torch.testing.assert_close(unblock(got), want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        again = blocked_conv2d(conv, x)  # the layout from the cache, the weights from the derived-weight cache
        conv.weight.mul_(2)  # an in-place edit: the reordered weights are rebuilt
        doubled = blocked_conv2d(conv, x)
    assert torch.equal(again, got)
    torch.testing.assert_close(unblock(doubled), 2 * want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_blocked_conv_declines_what_it_does_not_run(monkeypatch) -> None:
    conv, x = nn.Conv2d(3, 64, 7, 2, 3, bias=False), torch.randn(1, 3, 32, 32)
    assert blocked_conv2d(conv, x) is None  # autograd on: the dense conv, which it can differentiate
    with torch.no_grad():
        assert blocked_conv2d(nn.Conv2d(3, 64, 7, 2, 3, dilation=2), x) is None
        assert blocked_conv2d(nn.Conv2d(3, 64, 7, 1, "same"), x) is None
        assert blocked_conv2d(conv, x.double()) is None
        odd = blocked_conv2d(nn.Conv2d(3, 12, 3, 1, 1), x)  # 12 channels: padded or not blocked by 8 / 16
        assert odd is None or odd.shape[4] * odd.shape[1] == 12
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        assert blocked_conv2d(conv, x) is None


@needs_onednn
@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize("block, epilogue", [(8, True), (16, True), (8, False)])
def test_pool_reads_the_blocked_layout_bit_for_bit(isa, block, epilogue) -> None:
    ext = _build.load_extension()
    gen = torch.Generator().manual_seed(block)
    x = (torch.randn(2, 32, 11, 9, generator=gen) * 2).round() / 2  # ties in the windows
    x[0, 3, 0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    terms = (torch.randn(32, generator=gen), torch.randn(32, generator=gen), torch.randn(32, generator=gen))
    terms = terms if epilogue else (None, None, None)
    dense = x.contiguous(memory_format=torch.channels_last)
    want = ext.max_pool2d(dense, 3, 3, 2, 2, 1, 1, _ISAS[isa], None, *terms)
    got = ext.max_pool2d(_blocked(x, block), 3, 3, 2, 2, 1, 1, _ISAS[isa], None, *terms)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


def test_pooled_stem_of_a_blocked_input_falls_back_to_pytorch(monkeypatch) -> None:
    monkeypatch.setenv("ZOO_DISABLE_KERNELS", "1")
    x = torch.randn(2, 16, 9, 9)
    scale, bias, slope = torch.randn(16), torch.randn(16), torch.randn(16)
    want = F.max_pool2d(F.prelu(x * scale[:, None, None] + bias[:, None, None], slope), 3, 2, 1)
    got = pooled_affine_prelu(_blocked(x, 8), scale, bias, slope, (3, 3), (2, 2), (1, 1))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_onednn_buffer_and_the_blocked_pool_refuse_wrong_input() -> None:
    ext = _build.load_extension()
    if ext is None:
        pytest.skip("the C++ extension is not available here")
    with pytest.raises(RuntimeError, match="needs a float32 mkldnn-layout tensor"):
        ext.onednn_buffer(torch.randn(4))
    with pytest.raises(RuntimeError, match="B a multiple of 8"):
        ext.max_pool2d(torch.randn(1, 2, 6, 6, 4), 3, 3, 2, 2, 1, 1, 0)


@needs_onednn
def test_packed_bnn_stem_runs_the_blocked_conv(monkeypatch) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18_bireal", num_classes=10).eval()
    fast = zoo.to_inference(model, channels_last=True)
    x = torch.randn(2, 3, 64, 64)
    calls = []
    original = zoo.inference.blocked_conv2d
    monkeypatch.setattr(zoo.inference, "blocked_conv2d", lambda conv, x: calls.append(x.shape) or original(conv, x))
    with torch.no_grad():
        blocked = fast(x)
        monkeypatch.setattr(zoo.inference, "blocked_conv2d", lambda conv, x: None)
        dense = fast(x)
        reference = model(x)
    assert calls == [x.shape]
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocked, reference, rtol=1e-4, atol=1e-4)
