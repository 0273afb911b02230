"""The one-pass channels_last ops around the binary units: max-pool bit for bit PyTorch's, the stem's folded BN +
PReLU the single-rounding affine of the binary kernels' epilogue, on every ISA path; and their place in
``to_inference``."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo
import zoo.kernels as zk
from zoo.inference import BatchSlicedStem, ChannelsLastMaxPool2d, FoldedBatchNormAct, PointwiseConvBatchNorm
from zoo.kernels import _build
from zoo.kernels.binary import _apply_epilogue
from zoo.kernels.blocked_conv import blocked_conv2d
from zoo.kernels.channels_last import affine_prelu, max_pool2d, pooled_affine_prelu, unblock

_ISAS = {"scalar": 1, "avx2": 2, "avx512-vpopcntdq": 3}
CPU_PATHS = [name for name in _ISAS if name in zk.available_isas()]


def _awkward(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random channels_last values with NaN, ±inf and both zeros planted."""
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    x[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")])[: min(4, w)]
    x[-1, -1, -1, -1] = 0.0
    return x.contiguous(memory_format=torch.channels_last)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaNs in the same places and the same sign bits (so -0.0 != +0.0)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num().view(torch.int32), b.nan_to_num().view(torch.int32)
    )


@pytest.mark.skipif(not CPU_PATHS, reason="the C++ extension is not available here")
@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((1, 64, 112, 112), (3, 3), (2, 2), (1, 1)),
        ((2, 5, 9, 7), (3, 3), (2, 2), (1, 1)),
        ((3, 17, 8, 8), (2, 2), (2, 2), (0, 0)),
        ((1, 3, 5, 6), (3, 2), (1, 2), (1, 0)),
        ((2, 9, 4, 4), (4, 4), (3, 1), (2, 2)),
    ],
)
def test_max_pool_is_pytorchs_bit_for_bit(isa, shape, kernel, stride, padding) -> None:
    ext = _build.load_extension()
    x = _awkward(*shape, seed=sum(shape))
    x[0, 1 % shape[1]] = -0.0  # a window of -0.0 and +0.0 keeps the first
    x[0, 1 % shape[1], 0, 0] = 0.0
    got = ext.max_pool2d(x, *kernel, *stride, *padding, _ISAS[isa])
    want = F.max_pool2d(x, kernel, stride, padding)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert _same(got, want)


@pytest.mark.skipif(not CPU_PATHS, reason="the C++ extension is not available here")
@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize("c, slopes", [(64, 64), (13, 1), (8, None), (3, 3)])
def test_affine_prelu_is_the_epilogues_single_rounding(isa, c, slopes) -> None:
    ext = _build.load_extension()
    gen = torch.Generator().manual_seed(c)
    x = _awkward(2, c, 5, 6, seed=c)
    scale, bias = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    slope = None if slopes is None else torch.randn(slopes, generator=gen)
    got = ext.affine_prelu(x, scale, bias, slope, _ISAS[isa])
    affine = (x.double() * scale.double()[:, None, None] + bias.double()[:, None, None]).float()
    want = affine if slope is None else F.prelu(affine, slope)
    # float64 then float32 is a double rounding, the kernel's FMA a single one: they may differ by an ulp
    torch.testing.assert_close(got, want, rtol=1.2e-7, atol=0, equal_nan=True)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not CPU_PATHS, reason="the C++ extension is not available here")
@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize("c, slopes", [(64, 64), (13, 1), (8, None), (3, 3), (20, 20)])
def test_pooled_affine_prelu_is_the_two_passes_bit_for_bit(isa, c, slopes) -> None:
    """The max-pool of the BN + PReLU from each window's max and min: negative and zero scales (the affine falls),
    negative slopes (PReLU falls then rises), ties (values on a coarse grid), NaN, ±inf and both zeros."""
    ext = _build.load_extension()
    gen = torch.Generator().manual_seed(c)
    x = (_awkward(2, c, 11, 9, seed=c) * 2).round() / 2  # many equal values in a window
    x[1, :, 2:5, 2:5] = -0.0
    scale, bias = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    scale[0] = 0.0
    slope = None if slopes is None else torch.randn(slopes, generator=gen)
    want = F.max_pool2d(ext.affine_prelu(x, scale, bias, slope, _ISAS[isa]), 3, 2, 1)
    got = ext.max_pool2d(x, 3, 3, 2, 2, 1, 1, _ISAS[isa], None, scale, bias, slope)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.isnan().any()
    assert _same(got, want)
    out = torch.full((3, c, 6, 5), 7.0).contiguous(memory_format=torch.channels_last)
    returned = pooled_affine_prelu(x, scale, bias, slope, (3, 3), (2, 2), (1, 1), out=out[1:])
    assert returned.data_ptr() == out[1:].data_ptr() and _same(out[1:], want) and (out[0] == 7.0).all()


def test_channels_last_ops_fall_back_to_pytorch_elsewhere(monkeypatch) -> None:
    x = torch.randn(2, 6, 9, 9)  # NCHW: not the kernel's layout
    assert torch.equal(max_pool2d(x, (3, 3), (2, 2), (1, 1)), F.max_pool2d(x, 3, 2, 1))
    scale, bias, slope = torch.randn(6), torch.randn(6), torch.randn(6)
    assert torch.equal(affine_prelu(x, scale, bias, slope), _apply_epilogue(x, scale, bias, None, slope, None))
    pooled = pooled_affine_prelu(x, scale, bias, slope, (3, 3), (2, 2), (1, 1))
    assert torch.equal(pooled, F.max_pool2d(affine_prelu(x, scale, bias, slope), 3, 2, 1))
    monkeypatch.setenv("ZOO_DISABLE_KERNELS", "1")
    y = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool2d(y, (3, 3), (2, 2), (1, 1)), F.max_pool2d(y, 3, 2, 1))


def test_channels_last_ops_refuse_what_they_cannot_compute() -> None:
    ext = _build.load_extension()
    if ext is None:
        pytest.skip("the C++ extension is not available here")
    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="channels_last memory format"):
        ext.max_pool2d(x.contiguous(), 3, 3, 2, 2, 1, 1, 0)
    with pytest.raises(RuntimeError, match="padding <= kernel / 2"):
        ext.max_pool2d(x, 3, 3, 2, 2, 2, 2, 0)
    with pytest.raises(RuntimeError, match="prelu_weight must be float32 on the CPU with 1 or 4"):
        ext.affine_prelu(x, torch.ones(4), torch.zeros(4), torch.ones(3), 0)
    with pytest.raises(RuntimeError, match="epilogue needs both scale and bias"):
        ext.max_pool2d(x, 3, 3, 2, 2, 1, 1, 0, None, torch.ones(4), None, None)


@pytest.mark.parametrize("arch", ["resnet18_bireal", "resnet18_sdbnn"])
def test_imagenet_bnn_stem_is_folded_and_its_max_pool_fused(arch) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fast = zoo.to_inference(model, channels_last=True)
    assert isinstance(fast.conv1, BatchSlicedStem) and isinstance(fast.conv1.norm_act, FoldedBatchNormAct)
    assert isinstance(fast.conv1.pool, ChannelsLastMaxPool2d)
    assert all(isinstance(getattr(fast, name), nn.Identity) for name in ("bn1", "act1", "maxpool"))
    assert fast.feature_info[0]["reduction"] == 4 and model.feature_info[0]["reduction"] == 2  # the tap is pooled
    shortcuts = [b.shortcut for stage in (fast.layer2, fast.layer3, fast.layer4) for b in stage[:1]]
    assert all(isinstance(s[1], PointwiseConvBatchNorm) and isinstance(s[2], nn.Identity) for s in shortcuts)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
        exact = zoo.to_inference(model, fold_bn=False)  # the max-pool kernel is exact: still the fake-quant logits
        assert isinstance(exact.maxpool, ChannelsLastMaxPool2d) and isinstance(exact.bn1, nn.BatchNorm2d)
        assert torch.equal(exact(x), model(x))


def test_stem_pass_overwrites_only_a_temporary_nobody_else_keeps() -> None:
    model = timm.create_model("resnet18_bireal", num_classes=10).eval()
    fast = zoo.to_inference(model, channels_last=True)
    conv, norm_act = fast.conv1.conv, fast.conv1.norm_act
    assert norm_act.inplace
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stem = conv(x)
        kept = stem.clone()
        out = norm_act(stem)
        assert out.data_ptr() == stem.data_ptr() or not _build.load_extension()  # written over the conv's output
        norm_act.inplace = False
        assert torch.equal(norm_act(kept.clone()), out)
    seen = []
    model.conv1.register_forward_hook(lambda module, args, output: seen.append(output))
    hooked = zoo.to_inference(model, channels_last=True)
    assert not hooked.bn1.inplace  # a hook may keep the conv's output: it must stay as the hook saw it
    assert isinstance(hooked.maxpool, ChannelsLastMaxPool2d)  # and the stem is not sliced past the hook
    with torch.no_grad():
        hooked(x)
    assert torch.equal(seen[-1], hooked.conv1(x))
    grad_in = kept.clone().requires_grad_()
    fast.bn1.inplace = True
    fast.bn1(grad_in)  # autograd records the input: never overwritten
    assert torch.equal(grad_in.detach(), kept)


def test_a_pointwise_conv_and_its_batchnorm_become_one_gemm_in_channels_last_only() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(24, 40, 1, bias=True), nn.BatchNorm2d(40).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    unit = nn.Sequential(nn.AvgPool2d(2), conv, bn, nn.Conv2d(40, 8, 3))  # the 3x3 conv stays as it is
    fast = zoo.to_inference(unit, channels_last=True)
    assert isinstance(fast[1], PointwiseConvBatchNorm) and isinstance(fast[2], nn.Identity)
    assert type(fast[3]) is nn.Conv2d
    x = torch.randn(3, 24, 14, 10)
    with torch.no_grad():
        ref = bn(conv(x))
        for layout in (torch.channels_last, torch.contiguous_format):  # GEMM on channels_last, conv2d otherwise
            out = fast[1](x.contiguous(memory_format=layout))
            assert out.is_contiguous(memory_format=layout)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert type(zoo.to_inference(unit)[1]) is nn.Conv2d  # the NCHW form keeps its convs and BNs
    strided = nn.Sequential(nn.Conv2d(24, 40, 1, stride=2), nn.BatchNorm2d(40).eval())
    hooked = nn.Sequential(nn.Conv2d(24, 40, 1), nn.BatchNorm2d(40).eval())
    hooked[1].register_forward_hook(lambda *args: None)
    for keeps in (strided, hooked):
        assert type(zoo.to_inference(keeps, channels_last=True)[0]) is nn.Conv2d


@pytest.mark.parametrize("batch", [2, 5])
def test_batch_sliced_stem_is_bit_exact_and_skips_ir2net(batch, monkeypatch) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18_sdbnn", num_classes=10).eval()
    fast = zoo.to_inference(model, channels_last=True)
    x = torch.randn(batch, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        whole = fast(x)  # 48x48: the whole batch's stem fits one slice
        monkeypatch.setattr(BatchSlicedStem, "slice_bytes", 1)  # one image per slice
        assert torch.equal(fast(x), whole)
        monkeypatch.setattr(BatchSlicedStem, "slice_bytes", 2 * 64 * 24 * 24 * 4)  # two images per slice
        assert torch.equal(fast(x), whole)
        assert torch.equal(fast(x.contiguous()), whole)  # NCHW input: the unsliced stem
        stem = fast.conv1
        features = blocked_conv2d(stem.conv, x)  # the conv the stem runs (oneDNN's blocked layout where it can)
        conv_out = stem.conv(x) if features is None else unblock(features)
        two_passes = stem.pool(stem.norm_act(conv_out))  # BN + PReLU at full resolution, then the pool
        assert torch.equal(stem(x), two_passes)
    ir2net = zoo.to_inference(timm.create_model("resnet18_ir2net", num_classes=10).eval(), channels_last=True)
    assert isinstance(ir2net.maxpool, ChannelsLastMaxPool2d)  # its recovery reads the stem before the pool


def test_max_pool_writes_into_a_given_output() -> None:
    x = torch.randn(3, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    out = torch.full((5, 8, 5, 5), 7.0).contiguous(memory_format=torch.channels_last)
    returned = max_pool2d(x, (3, 3), (2, 2), (1, 1), out=out[1:4])
    assert torch.equal(returned, F.max_pool2d(x, 3, 2, 1)) and returned.data_ptr() == out[1:4].data_ptr()
    assert torch.equal(out[0], torch.full((8, 5, 5), 7.0)) and torch.equal(out[4], torch.full((8, 5, 5), 7.0))
    if _build.load_extension() is not None:
        with pytest.raises(RuntimeError, match="out must be"):
            max_pool2d(x, (3, 3), (2, 2), (1, 1), out=out[:2])
