"""Bad tensors (wrong rank, dtype, channel count, spatial size) get an InputError naming the expected and the given
value and the fix; empty batches and NaN/Inf inputs have a documented, tested behaviour."""

from __future__ import annotations

import copy
import pickle
import time

import pytest
import timm
import torch
from conftest import REPO_ROOT

import zoo
from zoo.errors import InputError, ZooError
from zoo.inference import PackedBinaryConv2d
from zoo.kernels import available_isas, set_kernel_isa
from zoo.models._input_check import check_input, install_input_check
from zoo.nn import BinaryConv2d, SelfDistributionBinaryConv2d

PRUNED_INNER = [8] * 9 + [16] * 9 + [24] * 9  # resnet56_l1's 27 blocks, narrowed

#: id -> constructor; every model built once per module (``models`` fixture).
BUILDERS = {
    "resnet20": lambda: timm.create_model("resnet20", in_chans=3),
    "resnet20_bnn": lambda: timm.create_model("resnet20_bnn"),
    "vgg_small_bnn": lambda: timm.create_model("vgg_small_bnn", in_chans=1, img_size=28, widths=(8, 8, 16, 16, 32, 32)),
    "resnet56_l1": lambda: timm.create_model("resnet56_l1", inner_widths=PRUNED_INNER),
    "resnet20.fmnist": lambda: zoo.from_pretrained("resnet20.fmnist"),
    "resnet20_bnn.fmnist/packed": lambda: zoo.to_inference(zoo.from_pretrained("resnet20_bnn.fmnist")),
}
IDS = list(BUILDERS)
MIN_SIZE = {"resnet20": 4, "resnet20_bnn": 4, "resnet56_l1": 4, "resnet20.fmnist": 4, "resnet20_bnn.fmnist/packed": 4}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build().eval() for name, build in BUILDERS.items()}


def _shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model takes: its stem's channels and its cfg's size (the fixed size for VGG-Small)."""
    c = model.get_submodule(model.zoo_input_spec.first_conv).in_channels
    h, w = model.zoo_input_spec.fixed_size or model.pretrained_cfg["input_size"][1:]
    return c, h, w


def _raises(model: torch.nn.Module, x, *expected: str) -> str:
    with pytest.raises(InputError) as info, torch.no_grad():
        model(x)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ZooError)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    return message


@pytest.mark.parametrize("name", IDS)
def test_good_input_and_empty_batch(models, name: str) -> None:
    model = models[name]
    c, h, w = _shape(model)
    with torch.no_grad():
        assert model(torch.randn(2, c, h, w)).shape == (2, model.num_classes)
        empty = model(torch.randn(0, c, h, w))
    assert empty.shape == (0, model.num_classes) and empty.dtype == torch.float32


@pytest.mark.parametrize("name", ["resnet20_bnn", "vgg_small_bnn"])
def test_empty_batch_through_the_packed_kernels(models, name: str) -> None:
    packed = zoo.to_inference(models[name])
    c, h, w = _shape(packed)
    for isa in [*available_isas(), "torch"]:
        set_kernel_isa(isa.split("-")[0])
        try:
            with torch.no_grad():
                assert packed(torch.randn(0, c, h, w)).shape == (0, 10), isa
        finally:
            set_kernel_isa(None)


@pytest.mark.parametrize("name", IDS)
def test_rank(models, name: str) -> None:
    model = models[name]
    c, h, w = _shape(model)
    _raises(model, torch.randn(c, h, w), "4-D (N, C, H, W)", f"3-D tensor of shape {(c, h, w)}", "x.unsqueeze(0)")
    _raises(model, torch.randn(1, 1, c, h, w), "4-D", "5-D")
    _raises(model, [[0.0]], "torch.Tensor", "got list")


@pytest.mark.parametrize("name", IDS)
def test_integer_images_are_told_to_convert_and_normalise(models, name: str) -> None:
    model = models[name]
    c, h, w = _shape(model)
    mean = tuple(float(v) for v in model.pretrained_cfg["mean"])
    pixels = torch.randint(0, 256, (2, c, h, w), dtype=torch.uint8)
    _raises(model, pixels, "floating-point", "got dtype torch.uint8", "x.float() / 255", f"mean={mean}")
    _raises(model, pixels.long(), "got dtype torch.int64")


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_name_both_dtypes(models, name: str, dtype: torch.dtype) -> None:
    model = models[name]
    x = torch.randn(2, *_shape(model)).to(dtype)
    _raises(model, x, "runs in torch.float32", f"input is {dtype}", "x.to(torch.float32)", "torch.autocast")


def test_autocast_and_a_converted_model_take_their_dtype(models) -> None:
    model = models["resnet20.fmnist"]
    x = torch.randn(2, *_shape(model))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16()).dtype == torch.bfloat16
    double = copy.deepcopy(model).double()
    with torch.no_grad():
        assert double(x.double()).dtype == torch.float64
    _raises(double, x, "runs in torch.float64", "input is torch.float32")


@pytest.mark.parametrize("name", IDS)
def test_channel_count(models, name: str) -> None:
    model = models[name]
    c, h, w = _shape(model)
    other = 3 if c == 1 else 1
    conversion = "x.expand(-1, 3, -1, -1)" if c == 3 else "x.mean(1, keepdim=True)"
    expected = (f"expects {c}-channel images, got {other} channel", f"in_chans={other}", conversion)
    _raises(model, torch.randn(2, other, h, w), *expected)
    _raises(model, torch.randn(2, 5, h, w), f"expects {c}-channel images, got 5 channel", "in_chans=5")


def test_channels_last_images_are_told_to_permute(models) -> None:
    model = models["resnet20"]
    _raises(model, torch.randn(2, 32, 32, 3), "expects 3-channel images, got 32", "x.permute(0, 3, 1, 2)")


@pytest.mark.parametrize("name", list(MIN_SIZE))
def test_spatial_size_at_least_the_output_stride(models, name: str) -> None:
    model = models[name]
    c, _, _ = _shape(model)
    m = MIN_SIZE[name]
    assert model.zoo_input_spec.min_size == m
    with torch.no_grad():
        assert model(torch.randn(1, c, m, m)).shape == (1, 10)
        assert model(torch.randn(1, c, m, 3 * m + 1)).shape == (1, 10)
    _raises(model, torch.randn(1, c, m - 1, 16), f"at least {m}×{m}", f"got {m - 1}×16", "output stride")
    _raises(model, torch.randn(1, c, 16, 0), f"at least {m}×{m}", "got 16×0")


def test_minimum_follows_the_network_downsampling() -> None:
    assert timm.create_model("resnet18_cifar_bnn").zoo_input_spec.min_size == 8
    imagenet = timm.create_model("resnet18_bireal", stage_widths=(8, 8, 8, 8), layers=(1, 1, 1, 1)).eval()
    assert imagenet.zoo_input_spec.min_size == 32
    _raises(imagenet, torch.randn(1, 3, 31, 31), "at least 32×32", "got 31×31", "input_size is 224×224")
    # a features_only wrapper checks the largest reduction of its taps
    taps = timm.create_model("resnet18_bireal", features_only=True, out_indices=(0, 1), stage_widths=(8, 8, 8, 8))
    assert taps.zoo_input_spec.min_size == 4
    _raises(taps, torch.randn(1, 3, 3, 3), "at least 4×4", "got 3×3")
    _raises(taps, torch.randn(1, 1, 8, 8), "expects 3-channel images, got 1")


def test_fixed_size_model_takes_exactly_its_size(models) -> None:
    model = models["vgg_small_bnn"]
    assert model.zoo_input_spec.fixed_size == (28, 28)
    _raises(model, torch.randn(1, 1, 32, 32), "built for 28×28", "got 32×32", "img_size=32")
    _raises(model, torch.randn(1, 1, 28, 30), "built for 28×28", "got 28×30", "img_size=(28, 30)")
    # its features_only forms have no flattening head: any size down to the stride of the requested taps
    for cls in ("list", "getter"):
        feats = timm.create_model("vgg_small_bnn", in_chans=1, features_only=True, feature_cls=cls)
        assert feats.zoo_input_spec.fixed_size is None and feats.zoo_input_spec.min_size == 8
        with torch.no_grad():
            assert feats(torch.randn(1, 1, 16, 16))[-1].shape[-1] == 2
        _raises(feats, torch.randn(1, 1, 7, 7), "at least 8×8")
        _raises(feats, torch.randn(1, 3, 16, 16), "expects 1-channel images, got 3")


# ---- NaN / Inf: not checked; documented and tested behaviour ------------------------------------------------------


def test_full_precision_model_returns_non_finite_logits_for_a_nan_image(models) -> None:
    model = models["resnet20.fmnist"]
    x = torch.randn(3, *_shape(model))
    x[1, 0, 5, 5] = float("nan")
    with torch.no_grad():
        out = model(x)
    assert out[1].isnan().all() and out[[0, 2]].isfinite().all()


def _with_nan_inf(x: torch.Tensor) -> torch.Tensor:
    flat = x.view(-1)
    flat[::17], flat[5::23], flat[9::29], flat[3::31] = float("nan"), float("inf"), -float("inf"), -0.0
    return x


def _isas() -> list[str]:
    return [isa.split("-")[0] for isa in available_isas()] + ["torch"]


@pytest.mark.parametrize("conv_cls", [BinaryConv2d, SelfDistributionBinaryConv2d])
def test_packed_binary_conv_signs_nan_and_inf_like_the_fake_quant_one(conv_cls) -> None:
    # the rule both forms share: bit = x >= threshold, so NaN -> -1, +inf -> +1, -inf -> -1, -0.0 -> +1
    torch.manual_seed(0)
    conv = conv_cls(70, 8, 3, 1, 1).eval()  # 70 channels: two packed words, one partial
    x = _with_nan_inf(torch.randn(3, 70, 6, 6))
    x[2, 4] = float("nan")  # a whole channel NaN: SD-BNN's shift (and threshold) of sample 2 is NaN
    with torch.no_grad():
        ref = conv(x)
    assert ref.isfinite().all()
    for isa in _isas():
        set_kernel_isa(isa)
        try:
            with torch.no_grad():
                torch.testing.assert_close(PackedBinaryConv2d(conv)(x), ref, rtol=0, atol=0, msg=isa)
        finally:
            set_kernel_isa(None)


def test_packed_bnns_match_fake_quant_on_nan_and_inf_images(models) -> None:
    # VGG-Small: the stem's Hardtanh passes NaN on to the first binary conv, whose sign makes it -1, and no shortcut
    # carries it around: its logits stay finite.
    vgg = models["vgg_small_bnn"]
    x = _with_nan_inf(torch.randn(4, *_shape(vgg)))
    with torch.no_grad():
        ref = vgg(x)
        assert ref.isfinite().all()
        torch.testing.assert_close(zoo.to_inference(vgg, fold_bn=False)(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(zoo.to_inference(vgg)(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # The released BNN: sparse ±inf pixels saturate (finite logits). A NaN pixel survives only where the shortcuts
    # carry it (the binary convs turn it into -1): at (8, 8) the option-A subsampling keeps it (NaN logits), at
    # (10, 10) the second subsampling drops it (finite logits). Both forms agree on all three.
    folded = models["resnet20_bnn.fmnist/packed"]
    float_model = zoo.from_pretrained("resnet20_bnn.fmnist").eval()
    packed = zoo.to_inference(float_model, fold_bn=False)  # bit-exact; the folded default agrees to float rounding
    x = torch.randn(3, *_shape(packed))
    x[0, 0, 3, 4], x[0, 0, 20, 9] = float("inf"), -float("inf")
    x[1, 0, 8, 8], x[2, 0, 10, 10] = float("nan"), float("nan")
    with torch.no_grad():
        ref, out = float_model(x), packed(x)
    assert ref[0].isfinite().all() and ref[1].isnan().all() and ref[2].isfinite().all()
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ref, rtol=1e-5, atol=1e-5, equal_nan=True)


# ---- the hook: installed once, kept by copies, metadata only --------------------------------------------------------


def test_check_survives_copies_and_is_installed_once(models) -> None:
    model = models["resnet20"]
    assert len(model._forward_pre_hooks) == 1
    install_input_check(model)
    assert len(model._forward_pre_hooks) == 1
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), zoo.to_inference(model)):
        _raises(other, torch.randn(2, 1, 32, 32), "expects 3-channel images")
    hub = torch.hub.load(str(REPO_ROOT), "resnet20", source="local", in_chans=3, trust_repo=True)
    _raises(hub, torch.randn(2, 1, 32, 32), "expects 3-channel images")


def test_a_replaced_stem_is_followed(models) -> None:
    model = copy.deepcopy(models["resnet20"])
    model.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1, bias=False)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    _raises(model, torch.randn(2, 3, 32, 32), "expects 1-channel images, got 3")


def test_check_reads_metadata_only(models) -> None:
    model = models["resnet20"]
    # meta tensors have no data: any per-element work would fail on them
    assert check_input(model, (torch.empty(10**6, 3, 4096, 4096, device="meta"),), {}) is None
    with pytest.raises(InputError, match="expects 3-channel"):
        check_input(model, (torch.empty(10**6, 1, 4096, 4096, device="meta"),), {})

    x = torch.randn(1, 3, 32, 32)

    def best(fn, repeats: int, rounds: int = 5) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times.append((time.perf_counter() - start) / repeats)
        return min(times)

    with torch.no_grad():
        hook = best(lambda: check_input(model, (x,), {}), 2000)
        forward = best(lambda: model(x), 20)
    assert hook < 0.02 * forward, f"check {hook * 1e6:.1f} µs vs batch-1 forward {forward * 1e6:.0f} µs"
