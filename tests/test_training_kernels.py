"""The CPU kernels of fake-quant training compute what the plain PyTorch ops compute, bit for bit."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo.kernels as zk
from training.objectives import ObjectiveContext, get_objective
from training.trainer import set_training_progress
from zoo.kernels.sign import hard_sign, hard_sign_reference, sign_backward
from zoo.nn import BinaryConv2d

pytestmark = pytest.mark.skipif(not zk.available_isas(), reason="needs the C++ CPU extension (x86-64 Linux)")

SPECIALS = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, float("nan"), float("inf"), -float("inf"), 1e-45])
ISA_OF_BACKEND = {"scalar": "scalar", "avx2": "avx2", "avx512-vpopcntdq": "avx512"}


def _inputs(shape: tuple[int, ...], channels_last: bool) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 1.5
    x.view(-1)[: len(SPECIALS)] = SPECIALS
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _eager(fn, *args):
    zk.set_kernel_isa("torch")
    try:
        return fn(*args)
    finally:
        zk.set_kernel_isa(None)


@pytest.mark.parametrize("channels_last", [False, True])
def test_hard_sign_kernel_is_the_reference(channels_last: bool) -> None:
    x = _inputs((3, 5, 7, 9), channels_last)
    y = hard_sign(x)
    assert torch.equal(y, hard_sign_reference(x)) and y.stride() == x.stride()
    assert hard_sign(SPECIALS).tolist() == [1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1]  # +-0 -> +1, NaN -> -1


@pytest.mark.parametrize("estimator", ["ste", "approx", "tanh"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sign_backward_kernel_is_the_eager_formula(estimator: str, channels_last: bool) -> None:
    saved = _inputs((4, 6, 5, 5), channels_last)
    saved = torch.tanh(0.7 * saved) if estimator == "tanh" else saved
    grad = (
        _inputs((4, 6, 5, 5), channels_last)
        .flip(0)
        .contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    )
    got = sign_backward(grad, saved, estimator, 3.25)
    want = _eager(sign_backward, grad, saved, estimator, 3.25)
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)) and got.isnan().equal(want.isnan())


def test_sign_backward_with_mismatched_strides_falls_back_to_the_eager_formula() -> None:
    grad = torch.randn(2, 3, 4, 4)
    saved = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert torch.equal(sign_backward(grad, saved, "approx"), _eager(sign_backward, grad, saved, "approx"))
    with pytest.raises(ValueError, match="unknown estimator"):
        _eager(sign_backward, grad, grad, "bogus")


def _training_step_grads(arch: str, channels_last: bool, isa: str | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10, in_chans=1).train()
    set_training_progress(model, 0.6)  # EDE's t and k away from their start
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    zk.set_kernel_isa(isa)
    try:
        loss = get_objective("ir2net" if arch == "resnet20_ir2net" else "cross_entropy")(
            model, x, y, ObjectiveContext()
        )
        loss.backward()
        ran_packed = [m._runs_packed_in_training(x) for m in model.modules() if isinstance(m, BinaryConv2d)]
    finally:
        zk.set_kernel_isa(None)
    assert all(ran_packed) if isa != "torch" else not any(ran_packed)
    grads = {f"grad.{n}": p.grad for n, p in model.named_parameters()}
    return {"loss": loss.detach(), **grads, **dict(model.named_buffers())}


@pytest.mark.parametrize("arch", ["resnet20_bnn", "resnet20_sdbnn", "resnet20_ir2net"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_a_training_step_on_the_kernels_equals_plain_pytorch(arch: str, channels_last: bool) -> None:
    want = _training_step_grads(arch, channels_last, "torch")
    for backend in zk.available_isas():  # the packed conv's forward on each ISA path (AVX2 forced too)
        got = _training_step_grads(arch, channels_last, ISA_OF_BACKEND[backend])
        differ = [k for k in want if not torch.equal(got[k], want[k])]
        assert not differ, f"{backend}: {differ[:5]}"


def test_the_packed_training_conv_is_used_only_where_it_is_exact() -> None:
    conv = BinaryConv2d(8, 8, 3, 1, 1).train()
    x = torch.randn(2, 8, 6, 6)
    assert conv._runs_packed_in_training(x)
    assert not conv._runs_packed_in_training(x.double())
    assert not conv.eval()._runs_packed_in_training(x)  # eval: F.conv2d, which FLOP/BOP counting sees
    real_weights = BinaryConv2d(8, 8, 3, 1, 1, weight_estimator="identity").train()
    assert not real_weights._runs_packed_in_training(x)  # two-step step 1: real weights, not a binary conv
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the forward stays exact, packed
        assert conv.train()._runs_packed_in_training(x) and conv._runs_packed_in_training(x.bfloat16())


def _conv_grads(conv: BinaryConv2d, x: torch.Tensor, context) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    with context:
        out = conv(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)) / 3)
    return out.detach().float(), x.grad, conv.weight.grad


def test_binary_convs_under_autocast_keep_an_exact_forward_and_round_only_the_backward() -> None:
    from contextlib import nullcontext

    torch.manual_seed(0)
    conv = BinaryConv2d(32, 32, 3, 1, 1).train()
    x = torch.randn(4, 32, 9, 9).contiguous(memory_format=torch.channels_last)
    want, got = _conv_grads(conv, x, nullcontext()), _conv_grads(conv, x, torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.equal(got[0], want[0])  # integer sums, exact either way
    for g, w in zip(got[1:], want[1:], strict=True):
        assert g.dtype == w.dtype == torch.float32 and not torch.equal(g, w)  # the bf16 backward did run...
        assert (g - w).norm() < 1e-2 * w.norm()  # ...and only rounded the incoming gradient
    assert torch.equal(_conv_grads(conv, x, nullcontext())[1], want[1])  # float32 again once autocast ends


def test_a_mixed_precision_step_returns_float32_logits_and_float32_gradients() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet20_ir2net", num_classes=10, in_chans=1).train()
    x = torch.randn(4, 1, 28, 28)
    context = ObjectiveContext(autocast_dtype=torch.bfloat16)
    logits, restricted = context.forward(model, x, restricted_pair=True)
    assert logits.dtype == restricted.dtype == torch.float32
    get_objective("ir2net")(model, x, torch.arange(4), context).backward()
    assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}


def test_the_throughput_benchmark_times_both_paths_side_by_side() -> None:
    from training.throughput import training_throughput

    result = training_throughput(["resnet20_bnn"], batch=4, steps=2, size=16, precisions=("bf16",))
    (row,) = result["rows"]
    assert row["arch"] == "resnet20_bnn" and row["kernels_ms"] > 0 and row["torch_ms"] > 0
    assert row["speedup"] == pytest.approx(row["torch_ms"] / row["kernels_ms"])
    assert row["speedup_bf16"] == pytest.approx(row["torch_ms"] / row["kernels_bf16_ms"])
    assert result["kernel_backend"] != "torch-fallback"
