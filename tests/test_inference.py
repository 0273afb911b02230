"""The inference form (packed 1-bit weights, popcount kernels) computes what the fake-quant model computes."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import released_ids

import zoo
from zoo.checkpoint import state_dict_for_saving
from zoo.data import dataset_spec, load_dataset, to_tensors
from zoo.evaluate import predict_logits
from zoo.inference import PACKED_SUFFIX, PackedBinaryConv2d, pack_binary_weights, unpack_binary_weights
from zoo.nn import BinaryConv2d
from zoo.registry import load_manifest

BINARY_ARCHS = zoo.list_architectures(binary_only=True)
SMALL_ARCHS = [a for a in BINARY_ARCHS if not a.startswith("resnet18_")] + ["resnet18_cifar_sdbnn"]
BINARY_RELEASES = [i for i in released_ids() if i.split(".")[0] in BINARY_ARCHS]


def _trained_like(arch: str) -> torch.nn.Module:
    """A model with non-trivial BN statistics and latent weights (as after training)."""
    torch.manual_seed(0)
    kwargs = {"img_size": 28} if arch.startswith("vgg") else {}
    model = timm.create_model(arch, in_chans=1, **kwargs).train()
    with torch.no_grad():
        model(torch.randn(32, 1, 28, 28))
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_inference_form_matches_fake_quant(arch: str) -> None:
    model = _trained_like(arch)
    fast = zoo.to_inference(model)
    assert not any(isinstance(m, BinaryConv2d) for m in fast.modules())
    assert sum(isinstance(m, PackedBinaryConv2d) for m in fast.modules()) > 0
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.argmax(1), ref.argmax(1))


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
def test_released_bnn_inference_form_on_its_whole_test_split(checkpoint_id: str) -> None:
    model = zoo.from_pretrained(checkpoint_id)
    fast = zoo.to_inference(model)
    spec = dataset_spec(load_manifest()[checkpoint_id]["metrics"]["dataset"])
    images, _ = to_tensors(load_dataset(spec.name, "test"), spec)
    ref = predict_logits(model, images, spec.mean, spec.std)
    out = predict_logits(fast, images, spec.mean, spec.std)
    assert torch.equal(out, ref)  # the default (layout-keeping) inference form is bit-exact
    fast_cl = zoo.to_inference(model, channels_last=True)
    assert torch.equal(predict_logits(fast_cl, images, spec.mean, spec.std).argmax(1), ref.argmax(1))
