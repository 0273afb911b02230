"""ONNX export (zoo.export_onnx) against onnxruntime, and timm's intermediate-feature API on every architecture."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import zoo
from zoo.export_onnx import export_onnx, static_adaptive_avg_pool2d
from zoo.models.cifar_resnet import CifarResNet
from zoo.nn import BinaryConv2d, SelfDistributionBinaryConv2d, SignQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ARCHS = zoo.list_architectures()
PRUNED_INNER = [8, 8, 8, 20, 20, 20, 33, 33, 33]
EXPORT_SIZE = (3, 16, 16)  # the CIFAR ResNets are fully convolutional: small inputs keep the file fast
SIGN_MARGIN = 1e-5  # activations this close to a sign's threshold could flip on float rounding differences


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _nontrivial(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    """Random init made non-trivial: noise on every parameter, then BN running statistics from train-mode passes.

    SD-BNN's α are spread out (init 0) so that the per-filter WSD shifts differ; they flip the sign of some
    near-zero weights, which the export must carry.
    """
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, SelfDistributionBinaryConv2d):
                m.alpha.copy_(2 * torch.randn_like(m.alpha))
        for bn in norms:  # running statistics: the plain average over the passes below
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for _ in range(4):
            model(torch.randn(8, *shape))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def _activation_sign_margin(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Smallest |input| over the activation signs of ``model`` on ``x`` (inf for a dense model)."""
    margins = [float("inf")]

    def record(_module: torch.nn.Module, inputs: tuple[torch.Tensor], _output: torch.Tensor) -> None:
        margins.append(inputs[0].abs().min().item())

    hooks = [m.input_quantizer.register_forward_hook(record) for m in model.modules() if isinstance(m, BinaryConv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return min(margins)


def _well_conditioned_batch(model: torch.nn.Module, batch: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A random batch none of whose activations lies within SIGN_MARGIN of a sign's threshold.

    ONNX Runtime and PyTorch round differently (e.g. ORT folds BN into the convs); near a sign's threshold an
    ulp-sized difference flips a binary activation and the outputs then legitimately differ.
    """
    for seed in range(200):
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
        if _activation_sign_margin(model, x) >= SIGN_MARGIN:
            return x
    raise AssertionError("no batch without near-threshold activations in 200 draws")


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


EXPORT_CASES = [
    pytest.param("resnet20", {}, id="resnet20"),
    pytest.param("resnet20", {"inner_widths": PRUNED_INNER}, id="resnet20-pruned"),
    pytest.param("resnet20_bnn", {}, id="resnet20_bnn"),
    pytest.param("resnet20_sdbnn", {}, id="resnet20_sdbnn"),
    pytest.param("resnet20_ir2net", {}, id="resnet20_ir2net"),
]


@pytest.mark.parametrize(("arch", "kwargs"), EXPORT_CASES)
def test_onnx_export_matches_pytorch(arch: str, kwargs: dict, tmp_path: Path) -> None:
    model = _nontrivial(timm.create_model(arch, in_chans=3, **kwargs), EXPORT_SIZE)
    state = copy.deepcopy(model.state_dict())
    quantizers = sum(isinstance(m, SignQuantizer) for m in model.modules())
    path = export_onnx(model, tmp_path / f"{arch}.onnx", EXPORT_SIZE)

    # The export works on a copy: the model keeps its quantizers (autograd Functions) and its weights.
    assert quantizers == sum(isinstance(m, SignQuantizer) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # standard ops only, no Python/autograd nodes
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    ops = [n.op_type for n in graph.node]
    # One Where per activation sign; the weight signs (SD-BNN's WSD shift included) are folded to ±1 constants.
    assert ops.count("Where") == len(binary)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    conv_weights = [weights[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in weights]
    # The exporter folds each conv's BN into it: a binary conv's filter is then ±(its channel's BN scale).
    assert sum(np.allclose(abs(w), abs(w).max(axis=(1, 2, 3), keepdims=True)) for w in conv_weights) == len(binary)
    assert not any(name.endswith(".alpha") for name in weights)  # the WSD parameters are folded, not exported
    if arch.endswith("sdbnn"):
        assert {q.estimator for c in binary for q in (c.weight_quantizer, c.input_quantizer)} == {"ede"}
        assert ops.count("Sigmoid") >= len(binary)  # the ASD branches run in the graph (input-dependent shift)

    session = _session(path)
    for batch in (4, 2):  # one graph, two batch sizes
        x = _well_conditioned_batch(model, batch, EXPORT_SIZE)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == expected.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))

    if arch.endswith("sdbnn"):  # the WSD shift changes this model's output, and the graph has it
        without_wsd = copy.deepcopy(model)
        for m in without_wsd.modules():
            if isinstance(m, SelfDistributionBinaryConv2d):
                m.alpha.data.fill_(-1e4)  # σ(α) = 0: no shift
        with torch.no_grad():
            assert (without_wsd(x) - torch.from_numpy(got)).abs().max() > 1e-3
    assert len({tuple(np.round(row, 4)) for row in got}) == len(got)  # a model that does not ignore its input


def test_export_refuses_packed_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_DISABLE_KERNELS", "1")  # the PyTorch packing fallback: no extension build
    packed = zoo.to_inference(timm.create_model("resnet20_bnn", in_chans=3))
    with pytest.raises(TypeError, match="PyTorch-only"):
        export_onnx(packed, tmp_path / "packed.onnx", EXPORT_SIZE)


def test_export_of_vgg_small_ir2net_at_28x28(tmp_path: Path) -> None:
    # At 28×28 the final map is 3×3 and the recovery pools the 28×28 stem unevenly (constant averaging matrices).
    # Narrow widths keep it fast and leave few activations near a sign's threshold.
    shape = (1, 28, 28)
    model = timm.create_model("vgg_small_ir2net", in_chans=1, img_size=28, widths=(16, 16, 32, 32, 64, 64))
    model = _nontrivial(model, shape)
    session = _session(export_onnx(model, tmp_path / "vgg.onnx", shape))
    for batch in (4, 2):
        x = _well_conditioned_batch(model, batch, shape)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize(("size", "out"), [((8, 8), (2, 4)), ((7, 9), (3, 4)), ((5, 6), (5, 6)), ((11, 7), (1, 1))])
def test_static_adaptive_pool_matches_adaptive_pool(size: tuple[int, int], out: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(static_adaptive_avg_pool2d(x, out), F.adaptive_avg_pool2d(x, out))


# ---- forward_intermediates / prune_intermediate_layers -------------------------------------------------------------


def same(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    return len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def _model_and_input(arch: str) -> tuple[torch.nn.Module, torch.Tensor]:
    model = timm.create_model(arch, in_chans=3).eval()
    size = 64 if model.pretrained_cfg["input_size"][-1] > 64 else 32
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_intermediates(arch: str) -> None:
    model, x = _model_and_input(arch)
    info = model.feature_info
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [t.shape[1] for t in taps] == [f["num_chs"] for f in info]
        assert [x.shape[-1] // t.shape[-1] for t in taps] == [f["reduction"] for f in info]
        assert same(model.forward_intermediates(x, intermediates_only=True), taps)
        assert same(model.forward_intermediates(x, indices=2, intermediates_only=True), taps[-2:])
        final_sel, sel = model.forward_intermediates(x, indices=[0, -1])
        assert torch.equal(final_sel, final) and same(sel, [taps[0], taps[-1]])
        final_early, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(final_early, taps[1]) and same(early, [taps[1]])
        with pytest.raises(AssertionError):
            model.forward_intermediates(x, indices=[len(info)])

    full_head = copy.deepcopy(model)
    kept = full_head.prune_intermediate_layers(indices=len(info))  # all taps: only the head goes
    assert kept == list(range(len(info)))
    with torch.no_grad():
        final_kept, taps_kept = full_head.forward_intermediates(x)
        assert torch.equal(final_kept, final) and same(taps_kept, taps)
        assert full_head.forward_head(final_kept, pre_logits=True).shape[1] == full_head.head_hidden_size

    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers(indices=[0, 1]) == [0, 1]
    assert pruned.num_features == info[1]["num_chs"] and getattr(pruned, "recovery", None) is None
    with torch.no_grad():
        final_pruned, taps_pruned = pruned.forward_intermediates(x, indices=[0, 1])
        assert same(taps_pruned, taps[:2]) and torch.equal(final_pruned, taps[1])
        assert torch.equal(pruned.forward_features(x), taps[1])
        assert pruned.forward_head(final_pruned, pre_logits=True).shape[1] == pruned.head_hidden_size
        pruned(x)


@pytest.mark.parametrize("arch", ARCHS)
def test_features_only_getter_uses_forward_intermediates(arch: str) -> None:
    model, x = _model_and_input(arch)
    getter = timm.create_model(arch, in_chans=3, features_only=True, feature_cls="getter").eval()
    missing, _ = getter.model.load_state_dict(model.state_dict(), strict=False)  # the getter's model has no head
    assert not missing
    listed = timm.create_model(arch, in_chans=3, features_only=True).eval()
    listed.load_state_dict({k: v for k, v in model.state_dict().items() if k in listed.state_dict()})
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        for outs in (getter(x), listed(x)):
            assert same(outs, taps)
    assert getter.feature_info.channels() == [f["num_chs"] for f in model.feature_info]


def test_pruned_widths_forward_intermediates() -> None:
    model = CifarResNet(depth=20, inner_widths=PRUNED_INNER).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
    assert [t.shape[1] for t in taps] == [16, 16, 32, 64]
