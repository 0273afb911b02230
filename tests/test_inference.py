"""The inference form (packed 1-bit weights, popcount kernels) computes what the fake-quant model computes.

Unfolded (``fold_bn=False``) it is bit-exact; with the BNs folded into the kernels' epilogue it agrees to float32
rounding (bit-exact too where PyTorch's own BN kernel rounds ``x * scale + bias`` once, as its FMA builds do).
"""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import released_ids
from torch import nn

import zoo
from zoo.checkpoint import state_dict_for_saving
from zoo.data import dataset_spec, load_dataset, to_tensors
from zoo.evaluate import accuracy, predict_logits
from zoo.inference import (
    PACKED_SUFFIX,
    PackedBinaryConv2d,
    batchnorm_affine,
    pack_binary_weights,
    unpack_binary_weights,
)
from zoo.kernels import available_isas, set_kernel_isa
from zoo.nn import BinaryConv2d
from zoo.nn.self_distribution import SelfDistributionBinaryConv2d
from zoo.registry import load_manifest

BINARY_ARCHS = zoo.list_architectures(binary_only=True)
SMALL_ARCHS = [a for a in BINARY_ARCHS if not a.startswith("resnet18_")] + ["resnet18_cifar_sdbnn"]
BINARY_RELEASES = [i for i in released_ids() if i.split(".")[0] in BINARY_ARCHS]
FOLD_ARCHS = SMALL_ARCHS + ["resnet18_bireal"]  # Bi-Real-18 at its smallest input, 32×32


def _size(arch: str) -> int:
    return 32 if arch == "resnet18_bireal" else 28


def _trained_like(arch: str) -> torch.nn.Module:
    """A model with non-trivial BN statistics and latent weights (as after training)."""
    torch.manual_seed(0)
    kwargs = {"img_size": 28} if arch.startswith("vgg") else {}
    model = timm.create_model(arch, in_chans=1, **kwargs).train()
    with torch.no_grad():
        model(torch.randn(32, 1, _size(arch), _size(arch)))
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _declared_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, BN) modules of every pair the blocks declare in ``conv_bn_pairs``."""
    return [
        (getattr(block, conv), getattr(block, bn))
        for block in model.modules()
        for conv, bn in getattr(block, "conv_bn_pairs", ())
    ]


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_inference_form_matches_fake_quant(arch: str) -> None:
    model = _trained_like(arch)
    fast = zoo.to_inference(model, fold_bn=False)
    assert not any(isinstance(m, BinaryConv2d) for m in fast.modules())
    assert sum(isinstance(m, PackedBinaryConv2d) for m in fast.modules()) > 0
    assert all(m.bn_scale is None for m in fast.modules() if isinstance(m, PackedBinaryConv2d))
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("arch", FOLD_ARCHS)
def test_folded_batchnorms_match_fake_quant(arch: str) -> None:
    model = _trained_like(arch)
    fast = zoo.to_inference(model)
    pairs = _declared_pairs(fast)
    assert pairs and all(isinstance(conv, PackedBinaryConv2d) for conv, _ in pairs)
    assert all(conv.bn_scale is not None and isinstance(bn, nn.Identity) for conv, bn in pairs)  # no BN left after
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    stems = sum(len(getattr(m, "conv_bn_act_units", ())) for m in model.modules())  # stem BN + PReLU, folded
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == bns - len(pairs) - stems
    x = torch.randn(8, 1, _size(arch), _size(arch))
    with torch.inference_mode():
        ref = model(x)
        for layout in (False, True):
            out = zoo.to_inference(model, channels_last=True)(x) if layout else fast(x)
            scale = ref.abs().max().item()
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)
            assert torch.equal(out.argmax(1), ref.argmax(1))


def _bn_rounds_once() -> bool:
    """Whether PyTorch's CPU BN computes ``x * scale + bias`` with one rounding (its AVX2 / AVX-512 builds do)."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(32).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 10)
        bn.weight.normal_()
        bn.bias.normal_()
        x = torch.randint(-300, 300, (4, 32, 8, 8)).float()
        scale, bias = batchnorm_affine(bn)
        once = (x.double() * scale.double()[:, None, None] + bias.double()[:, None, None]).float()
        return torch.equal(bn(x), once)


@pytest.mark.parametrize("arch", ["resnet20_sdbnn", "vgg_small_bnn", "resnet18_bireal"])
def test_folded_form_is_bit_exact_where_pytorch_bn_rounds_once(arch: str) -> None:
    if not _bn_rounds_once():
        pytest.skip("this PyTorch build's BN kernel rounds x * scale + bias twice")
    model = _trained_like(arch)
    x = torch.randn(4, 1, _size(arch), _size(arch))
    with torch.inference_mode():
        assert torch.equal(zoo.to_inference(model)(x), model(x))


@pytest.mark.parametrize("arch", ["resnet20_bnn", "resnet20_sdbnn", "resnet18_cifar_sdbnn", "resnet18_bireal"])
def test_residual_units_run_in_the_epilogue_and_equal_the_unfused_ops(arch: str, monkeypatch) -> None:
    """Every residual unit of a folded inference form adds its shortcut and applies its activation in the kernel's
    epilogue, with the same result as the folded conv followed by PyTorch's add and activation."""
    model = _trained_like(arch)
    fast = zoo.to_inference(model)
    x = torch.randn(3, 1, _size(arch), _size(arch))
    original, fused_units = PackedBinaryConv2d.forward_add_act, []

    def spy(conv: PackedBinaryConv2d, *args) -> torch.Tensor | None:
        out = original(conv, *args)
        fused_units.append(out is not None)
        return out

    with torch.inference_mode():
        monkeypatch.setattr(PackedBinaryConv2d, "forward_add_act", spy)
        fused = fast(x)
        monkeypatch.setattr(PackedBinaryConv2d, "forward_add_act", lambda *args: None)  # declined: the unfused path
        unfused = fast(x)
    assert len(fused_units) == len(_declared_pairs(fast)) and all(fused_units)  # every unit ran in its epilogue
    assert torch.equal(fused, unfused)


def test_residual_unit_with_a_hooked_activation_is_not_fused() -> None:
    model = _trained_like("resnet20_bnn")
    fast = zoo.to_inference(model)
    block = fast.layer1[0]
    seen = []
    block.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        h = torch.zeros(2, 16, 28, 28)
        assert block.conv1.forward_add_act(h, h, block.act) is None  # declined before computing anything
        out = fast(x)
        assert torch.equal(out, zoo.to_inference(model)(x))
    assert len(seen) == 2  # both units of the hooked block ran the activation module


def test_batchnorm_affine_is_the_bn() -> None:
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.linspace(-2, 3, 6))
        bn.running_var.copy_(torch.linspace(0.5, 4, 6))
        bn.weight.copy_(torch.linspace(-1, 2, 6))
        bn.bias.copy_(torch.linspace(1, -1, 6))
    scale, bias = batchnorm_affine(bn)
    expected = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(scale, expected.detach())
    torch.testing.assert_close(bias, (bn.bias - bn.running_mean * expected).detach())
    assert batchnorm_affine(bn.train()) is None  # batch statistics: not an affine map
    assert batchnorm_affine(nn.BatchNorm2d(6, track_running_stats=False).eval()) is None
    assert batchnorm_affine(nn.BatchNorm2d(6).double().eval()) is None


def test_folding_skips_hooked_batchnorms() -> None:
    model = _trained_like("resnet20_bnn")
    seen = []
    model.layer1[0].bn1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    fast = zoo.to_inference(model)
    assert isinstance(fast.layer1[0].bn1, nn.BatchNorm2d) and fast.layer1[0].conv1.bn_scale is None
    assert isinstance(fast.layer1[0].bn2, nn.Identity) and fast.layer1[0].conv2.bn_scale is not None
    with torch.inference_mode():
        fast(torch.randn(2, 1, 28, 28))
    assert seen == [(2, 16, 28, 28)]


class _ChildrenAsLeaves(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _conv_bn_pairs_in_forward(block: nn.Module) -> set[tuple[str, str]]:
    """(binary conv, BN) children where the BN's only input is the conv's output and nothing else reads it
    (Identity modules between them are looked through), from the traced ``forward``."""
    pairs = set()
    for node in _ChildrenAsLeaves().trace(block).nodes:
        if node.op != "call_module" or not isinstance(block.get_submodule(node.target), BinaryConv2d):
            continue
        out = node
        while len(out.users) == 1:
            (user,) = out.users
            if user.op != "call_module" or user.args != (out,) or user.kwargs:
                break
            child = block.get_submodule(user.target)
            if isinstance(child, nn.BatchNorm2d):
                pairs.add((node.target, user.target))
            if not isinstance(child, nn.Identity):
                break
            out = user
    return pairs


@pytest.mark.parametrize("arch", BINARY_ARCHS)
def test_declared_conv_bn_pairs_match_the_forward(arch: str) -> None:
    """Every block's ``conv_bn_pairs`` is exactly the set of binary conv → BN pairs its forward has."""
    kwargs = {"img_size": 28} if arch.startswith("vgg") else {}
    model = timm.create_model(arch, in_chans=1, **kwargs)
    found = 0
    for block in model.modules():
        if any(isinstance(c, BinaryConv2d) for c in block.children()):
            pairs = _conv_bn_pairs_in_forward(block)
            assert set(getattr(block, "conv_bn_pairs", ())) == pairs, type(block).__name__
            found += len(pairs)
    assert found > 0


def test_folded_conv_runs_its_bn_on_every_backend() -> None:
    torch.manual_seed(3)
    conv = BinaryConv2d(20, 12, 3, 1, 1)
    bn = nn.BatchNorm2d(12).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    packed = PackedBinaryConv2d(conv)
    assert packed.fold_batchnorm(bn) and not packed.fold_batchnorm(bn)  # a second BN is refused
    assert "bn folded" in repr(packed)
    x = torch.randn(2, 20, 7, 7)
    with torch.inference_mode():
        ref = bn(conv(x))
        for isa in [*available_isas(), "torch"]:
            set_kernel_isa(isa.split("-")[0])
            try:
                torch.testing.assert_close(packed(x), ref, rtol=1e-6, atol=1e-6, msg=isa)
            finally:
                set_kernel_isa(None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_asd_conv_is_exact_on_every_backend(dtype: torch.dtype) -> None:
    """SD-BNN's packed conv equals its fake-quant form whether the kernel computes the ASD threshold in its call
    (float32 on the C++ kernel) or the layer computes it and passes it (the fallback, float64)."""
    torch.manual_seed(5)
    conv = SelfDistributionBinaryConv2d(40, 12, 3, 1, 1, asd_reduction=8).eval().to(dtype)
    packed = PackedBinaryConv2d(conv)
    x = torch.randn(3, 40, 7, 7, dtype=dtype)
    with torch.inference_mode():
        ref = conv(x).float()
        for isa in [*available_isas(), "torch"]:
            set_kernel_isa(isa.split("-")[0])
            try:
                assert torch.equal(packed(x), ref), isa
            finally:
                set_kernel_isa(None)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_packed_checkpoint_round_trip_is_exact(arch: str) -> None:
    model = _trained_like(arch)
    packed = pack_binary_weights(model, state_dict_for_saving(model))
    assert any(k.endswith(PACKED_SUFFIX) for k in packed)
    assert all(v.dtype == torch.int64 for k, v in packed.items() if k.endswith(PACKED_SUFFIX))
    fresh = _trained_like(arch)
    fresh.load_state_dict(unpack_binary_weights(packed, fresh), strict=True)
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(fresh.eval()(x), model(x))


def test_packed_weights_that_do_not_fit_are_refused() -> None:
    model = _trained_like("resnet20_bnn")
    packed = pack_binary_weights(model, state_dict_for_saving(model))
    other = timm.create_model("resnet20_bnn", in_chans=1, stage_widths=(16, 32, 48))
    with pytest.raises(zoo.errors.ShapeMismatchError, match="does not fit"):
        unpack_binary_weights(packed, other)


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_id", BINARY_RELEASES)
def test_released_bnn_on_its_whole_test_split(checkpoint_id: str) -> None:
    """One pass of the fake-quant model over the whole test split, checked against every faster form.

    Its top-1 is the recorded one (what ``zoo eval`` of the other releases checks in test_cli); the unfolded,
    layout-keeping inference form is bit-exact; the folded forms keep every prediction; a float16 classifier
    changes at most 0.05 % of them.
    """
    model = zoo.from_pretrained(checkpoint_id)
    metrics = load_manifest()[checkpoint_id]["metrics"]
    spec = dataset_spec(metrics["dataset"])
    images, labels = to_tensors(load_dataset(spec.name, "test"), spec)
    mean, std = tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])  # as `zoo eval` does
    pooled = []  # the classifier's inputs, to score the float16 head on them without another pass
    hook = model.get_classifier().register_forward_hook(lambda _m, inputs, _out: pooled.append(inputs[0]))
    ref = predict_logits(model, images, mean, std)
    hook.remove()
    assert len(labels) == metrics["num_samples"]
    assert accuracy(ref, labels)["top1"] == pytest.approx(metrics["top1"], abs=0.011)  # at most one image differs
    assert torch.equal(predict_logits(zoo.to_inference(model, fold_bn=False), images, mean, std), ref)
    for folded in (zoo.to_inference(model), zoo.to_inference(model, channels_last=True)):
        assert torch.equal(predict_logits(folded, images, mean, std).argmax(1), ref.argmax(1))
    stored = zoo.from_pretrained(checkpoint_id)
    half = pack_binary_weights(model, state_dict_for_saving(model), float16_head=True)
    stored.load_state_dict(unpack_binary_weights(half, stored), strict=True)
    with torch.inference_mode():
        assert torch.equal(model.get_classifier()(pooled[0]), ref[: len(pooled[0])])  # the logits are the head's
        out = torch.cat([stored.eval().get_classifier()(x) for x in pooled]).argmax(1)
    assert (out != ref.argmax(1)).float().mean().item() <= 0.0005


def test_float16_head_storage_halves_the_classifier_only_and_loads_widened() -> None:
    model = _trained_like("resnet20_sdbnn")
    fp32 = pack_binary_weights(model, state_dict_for_saving(model))
    half = pack_binary_weights(model, state_dict_for_saving(model), float16_head=True)
    assert fp32.keys() == half.keys()
    assert [k for k, v in half.items() if v.dtype == torch.float16] == ["fc.weight"]
    assert all(torch.equal(v, fp32[k]) for k, v in half.items() if k != "fc.weight")
    fresh = _trained_like("resnet20_sdbnn")
    loaded = unpack_binary_weights(half, fresh)
    assert all(v.dtype == fresh.state_dict()[k].dtype for k, v in loaded.items())
    fresh.load_state_dict(loaded, strict=True)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        # the classifier comes after the last binarisation: only half-precision rounding of the logits' weights
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=1e-2, atol=1e-2)
        assert torch.equal(zoo.to_inference(fresh, fold_bn=False)(x), fresh(x))
