"""The BNN building blocks against their formulas (methods.md §1 IR²Net, §2 SD-BNN)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from training.trainer import set_training_progress
from zoo.measure import count_macs
from zoo.nn import (
    ActivationSelfDistribution,
    BinaryConv2d,
    CIRec,
    SelfDistributionBinaryConv2d,
    SignQuantizer,
    attention_map,
    ede_schedule,
    hard_sign,
    pool_and_concat,
    restriction_mask,
)
from zoo.nn.ir2net import hardtanh_act

X = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 3.0])


def _grad(quantizer: SignQuantizer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = quantizer(x)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


def test_tie_rule_maps_zero_to_plus_one_and_everything_to_pm1() -> None:
    assert hard_sign(X).tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert hard_sign(torch.tensor([-0.0])).item() == 1.0
    for estimator in ("ste", "approx", "ede"):
        y, _ = _grad(SignQuantizer(estimator), torch.randn(1000))
        assert set(y.unique().tolist()) == {-1.0, 1.0}


def test_clipped_ste_gradient() -> None:
    _, g = _grad(SignQuantizer("ste"), X)
    assert g.tolist() == [0, 1, 1, 1, 1, 1, 0]


def test_approx_sign_gradient() -> None:
    _, g = _grad(SignQuantizer("approx"), X)
    expected = [max(0.0, 2 - 2 * abs(v)) for v in X.tolist()]
    torch.testing.assert_close(g, torch.tensor(expected))


def test_ede_gradient_and_schedule() -> None:
    assert ede_schedule(0.0) == pytest.approx((1e-3, 1000.0))
    assert ede_schedule(1.0) == pytest.approx((10.0, 1.0))
    assert ede_schedule(0.5, 0.1, 10.0) == pytest.approx((1.0, 1.0))
    q = SignQuantizer("ede")
    q.set_training_progress(0.75)
    t, k = ede_schedule(0.75)
    assert (q.t, q.k) == (t, k)
    _, g = _grad(q, X)
    torch.testing.assert_close(g, k * t * (1 - torch.tanh(t * X) ** 2))


def test_identity_estimator_keeps_real_values() -> None:
    y, g = _grad(SignQuantizer("identity"), X)
    assert torch.equal(y, X) and torch.equal(g, torch.ones_like(X))


def test_binary_conv_is_conv_of_signs_with_zero_padding() -> None:
    torch.manual_seed(0)
    conv = BinaryConv2d(5, 7, 3, stride=2, padding=1)
    x = torch.randn(2, 5, 9, 9)
    expected = F.conv2d(hard_sign(x), hard_sign(conv.weight), None, 2, 1)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
    assert conv.binary


def test_weight_self_distribution_matches_hand_computation() -> None:
    conv = SelfDistributionBinaryConv2d(2, 2, 1, 1, 0, asd_reduction=16)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 3.0], [-2.0, -6.0]]).view(2, 2, 1, 1))
        conv.alpha.copy_(torch.tensor([0.0, math.log(3.0)]))  # sigmoid: 0.5 and 0.75
    shifted = conv.shifted_weight().view(2, 2)
    expected = torch.tensor([[1.0 + 0.5 * 0.01 * 2.0, 3.0 + 0.5 * 0.01 * 2.0], [-2.0 - 0.75 * 0.01 * 4.0, -6.0 - 0.03]])
    torch.testing.assert_close(shifted, expected)
    conv.shifted_weight().sum().backward()  # the filter mean is detached: d/dw is exactly 1
    assert torch.equal(conv.weight.grad, torch.ones_like(conv.weight))
    assert conv.alpha.grad is not None


def test_activation_self_distribution_matches_hand_computation() -> None:
    asd = ActivationSelfDistribution(4, reduction=16)
    assert asd.fc1.out_features == 1  # hidden width at least 1
    with torch.no_grad():
        asd.fc1.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.0]]))
        asd.fc2.weight.copy_(torch.tensor([[1.0], [-1.0], [2.0], [0.0]]))
    x = torch.arange(16.0).view(1, 4, 2, 2)
    gap = x.mean(dim=(2, 3))[0]  # 1.5, 5.5, 9.5, 13.5
    hidden = max(0.0, (gap[0] - gap[1] + 0.5 * gap[2]).item())
    expected = torch.sigmoid(torch.tensor([hidden, -hidden, 2 * hidden, 0.0])).view(1, 4, 1, 1)
    torch.testing.assert_close(asd(x), expected)
    conv = SelfDistributionBinaryConv2d(4, 3, 3, 1, 1)
    torch.testing.assert_close(conv.shifted_input(x), x + conv.asd(x))


def test_attention_map_normalises_each_column_along_height() -> None:
    f = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]], [[1.0, 0.0], [1.0, 2.0]]]])  # B=1, C=2, 2x2
    mean_sq = torch.tensor([[1.0, 2.0], [5.0, 2.0]])  # mean over channels of F²
    col_norm = mean_sq.pow(2).sum(dim=0).sqrt()  # per column (dim 1 of B×h×w = height)
    torch.testing.assert_close(attention_map(f)[0], mean_sq / col_norm)


def test_restriction_mask_worked_example() -> None:
    f = torch.zeros(1, 1, 2, 2)
    f[0, 0, 1, 1] = 1.0  # all attention in the bottom-right cell
    mask = restriction_mask(f, (3, 3), lam=0.15)
    # attention [[0,0],[0,1]] upsampled (align_corners) to 3x3 = [[0,0,0],[0,.25,.5],[0,.5,1]]; mean 0.25,
    # threshold 0.0375: the cells with positive attention survive.
    assert mask[0, 0].tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert not mask.requires_grad


def test_cirec_widths_and_groups() -> None:
    m = CIRec(128, 64, ratio=4, act_layer=hardtanh_act)
    assert m.primary_conv[0].out_channels == 16 and m.cheap_operation[0].groups == 16
    assert m(torch.randn(2, 128, 7, 7)).shape == (2, 64, 7, 7)
    plain = CIRec(1024, 512, ratio=1, act_layer=hardtanh_act)
    assert plain.cheap_operation is None and plain(torch.randn(1, 1024, 2, 2)).shape == (1, 512, 2, 2)


def test_pool_and_concat_taps() -> None:
    taps = [torch.randn(2, 16, 28, 28), torch.randn(2, 16, 28, 28), torch.randn(2, 32, 14, 14)]
    out = pool_and_concat(taps, torch.randn(2, 64, 7, 7))
    assert out.shape == (2, 128, 7, 7)
    torch.testing.assert_close(out[:, :16], F.adaptive_avg_pool2d(taps[0], 7))


def test_ir2net_resnet20_recovery_and_restriction_only_in_training() -> None:
    model = timm.create_model("resnet20_ir2net", in_chans=1)
    x = torch.randn(4, 1, 28, 28)
    stages = model.forward_stages(x)
    assert [tuple(s.shape[1:]) for s in stages] == [(16, 28, 28), (16, 28, 28), (32, 14, 14), (64, 7, 7)]
    assert model.forward_features(x).shape == (4, 64, 7, 7)
    model.train()
    logits, restricted = model(x, restricted_pair=True)
    assert logits.shape == restricted.shape == (4, 10)
    mask = restriction_mask(model.forward_stages(x)[-1], (28, 28))
    torch.testing.assert_close(restricted, model(x * mask))  # the second pass sees x masked by the attention
    with pytest.raises(RuntimeError, match="train mode only"):
        model.eval()(x, restricted_pair=True)
    with pytest.raises(RuntimeError):
        timm.create_model("resnet20_bnn", in_chans=1).train()(x, restricted_pair=True)


def test_sdbnn_ede_follows_training_progress() -> None:
    model = timm.create_model("resnet20_sdbnn", in_chans=1)
    set_training_progress(model, 0.5)
    quantizers = [m for m in model.modules() if isinstance(m, SignQuantizer)]
    assert len(quantizers) == 2 * 18 and all((q.t, q.k) == ede_schedule(0.5) for q in quantizers)


@pytest.mark.parametrize("arch", ["resnet20_bnn", "resnet20_sdbnn", "resnet20_ir2net"])
def test_resnet20_bops_equal_hand_count(arch: str) -> None:
    # 28x28 input: stage 1 six 16->16 convs at 28², stage 2 one 16->32/2 and five 32->32 at 14², stage 3 alike at 7².
    hand = 6 * 16 * 16 * 9 * 784 + (16 * 32 + 5 * 32 * 32) * 9 * 196 + (32 * 64 + 5 * 64 * 64) * 9 * 49
    counts = count_macs(timm.create_model(arch, in_chans=1), (1, 28, 28))
    assert counts["bops"] == hand == 30_707_712
    assert counts["ops"] == counts["flops"] + hand // 64
