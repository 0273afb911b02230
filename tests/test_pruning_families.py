"""Channel pruning (zoo/prune) beyond the CIFAR ResNets: CIFAR VGG-16 (both layouts), ImageNet ResNet-18 and ResNet-50.

Each family's coupling rule (``zoo.prune.layers``), plans applied to it, rebuilding from ``pruned_model_args``, the
importance criteria, and the L1 baseline reaching a FLOPs budget. Small inputs keep the ImageNet networks fast.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import zoo  # noqa: F401  (registers the timm architectures)
from zoo.measure import count_macs
from zoo.models.cifar_vgg import VggBlock
from zoo.nn.mseb import MSEB
from zoo.prune import PrunePlan, apply_plan, layer_widths, prunable_layers, pruned_model_args
from zoo.prune.acp import cluster_widths, dimension_bounds, inherit_by_l1, layer_widths_at, search_dimensions
from zoo.prune.importance import bn_scale, l1_filter_norm, mean_feature_maps, mean_gates
from zoo.prune.l1 import l1_plan
from zoo.prune.plan import keep_all
from zoo.prune.ucp import important_counts, ucp_plan

CIFAR = (3, 32, 32)
SMALL_IMAGENET = (3, 64, 64)

#: id -> (architecture, extra model args, input size)
FAMILIES = {
    "vgg16-acp": ("vgg16_cifar", {"layout": "acp"}, CIFAR),
    "vgg16-ucp": ("vgg16_cifar", {"layout": "ucp"}, CIFAR),
    "resnet18": ("resnet18_dense", {}, SMALL_IMAGENET),
    "resnet50": ("resnet50_dense", {}, SMALL_IMAGENET),
}
PRUNED_BOTTLENECK_PARTS = (".conv1.", ".bn1.", ".conv2.", ".bn2.", ".conv3.")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def trained_looking(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """A 10-class model in eval mode with random BN affine parameters and statistics, so a wrong channel shows."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=10, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def family(family_id: str) -> tuple[nn.Module, dict, tuple[int, int, int]]:
    arch, kwargs, input_size = FAMILIES[family_id]
    return trained_looking(arch, **kwargs), kwargs, input_size


def images(input_size: tuple[int, int, int], n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *input_size, generator=torch.Generator().manual_seed(seed))


def random_plan(model: nn.Module, seed: int = 0) -> PrunePlan:
    """Every layer keeps a random non-empty subset of its channels."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for width in layer_widths(model):
        kept = int(torch.randint(1, width + 1, (1,), generator=gen))
        keep.append(torch.randperm(width, generator=gen)[:kept].sort().values)
    return PrunePlan(keep)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    return [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]


# --- 1. each family's prunable layers -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["acp", "ucp"])
def test_vgg_layers_are_every_conv_feeding_the_next_conv_or_the_head(layout: str) -> None:
    with torch.device("meta"):
        model = timm.create_model("vgg16_cifar", layout=layout)
    layers = prunable_layers(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [layer.conv for layer in layers] == convs
    assert [layer.name for layer in layers[:3]] == ["stage1.0.conv", "stage1.1.conv", "stage2.0.conv"]
    assert {layer.model_arg for layer in layers} == {"widths"}
    assert [layer.consumers for layer in layers[:-1]] == [(conv,) for conv in convs[1:]]
    head = model.fc if layout == "acp" else model.pre_logits.fc  # UCP's hidden Linear(512 -> 512) after the pool
    assert layers[-1].consumers == (head,)


def test_basic_block_and_bottleneck_layers() -> None:
    with torch.device("meta"):
        r18, r50 = timm.create_model("resnet18_dense"), timm.create_model("resnet50_dense")
    basic = prunable_layers(r18)
    assert [(layer.name, layer.model_arg) for layer in basic[:2]] == [
        ("layer1.0.conv1", "inner_widths"),
        ("layer1.1.conv1", "inner_widths"),
    ]
    assert [(layer.conv, layer.norm, layer.consumers) for layer in basic] == [
        (b.conv1, b.bn1, (b.conv2,)) for b in residual_blocks(r18)
    ]
    assert all(layer.gate is None for layer in basic)
    # Two layers per bottleneck, in network order: conv1 (inner width), then conv2 (mid width).
    layers = prunable_layers(r50)
    assert len(layers) == 32
    assert [layer.model_arg for layer in layers] == ["inner_widths", "mid_widths"] * 16
    per_block = [((b.conv1, b.bn1, (b.conv2,)), (b.conv2, b.bn2, (b.conv3,))) for b in residual_blocks(r50)]
    rules = [rule for two in per_block for rule in two]
    assert [(layer.conv, layer.norm, layer.consumers) for layer in layers] == rules
    assert layers[1].name == "layer1.0.conv2"


def test_unsupported_models_and_broken_couplings_are_refused() -> None:
    with pytest.raises(TypeError, match="no prunable layers"):
        prunable_layers(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    # A concat pool doubles the pooled width: the classifier's inputs no longer map one to one onto the channels.
    with torch.device("meta"), pytest.raises(TypeError, match="one to one"):
        prunable_layers(timm.create_model("vgg16_cifar", global_pool="catavgmax"))


# --- 2. identity plan -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family_id", list(FAMILIES))
def test_identity_plan_keeps_logits_bit_identical(family_id: str) -> None:
    model, _, input_size = family(family_id)
    x = images(input_size)
    pruned = apply_plan(model, keep_all(model))
    assert pruned is not model
    assert torch.equal(logits(pruned, x), logits(model, x))


# --- 3. a random plan rebuilds from its model args ------------------------------------------------------------


@pytest.mark.parametrize(
    ("family_id", "arg_names"),
    [
        ("vgg16-acp", {"widths"}),
        ("vgg16-ucp", {"widths"}),
        ("resnet18", {"inner_widths"}),
        ("resnet50", {"inner_widths", "mid_widths"}),
    ],
    ids=list(FAMILIES),
)
def test_random_plan_rebuilds_through_timm_from_its_model_args(family_id: str, arg_names: set[str]) -> None:
    model, kwargs, input_size = family(family_id)
    plan = random_plan(model, seed=3)
    pruned = apply_plan(model, plan)
    args = pruned_model_args(pruned)
    assert set(args) == arg_names
    # Pruning leaves num_classes and VGG's layout alone: they come from the parent's own model args.
    arch = FAMILIES[family_id][0]
    rebuilt = timm.create_model(arch, num_classes=10, **kwargs, **args).eval()
    state = pruned.state_dict()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}
    rebuilt.load_state_dict(state, strict=True)
    x = images(input_size)
    assert torch.equal(logits(rebuilt, x), logits(pruned, x))


def test_bottleneck_model_args_split_the_plan_by_layer() -> None:
    model, _, _ = family("resnet50")
    plan = random_plan(model, seed=5)
    args = pruned_model_args(apply_plan(model, plan))
    assert args == {"inner_widths": plan.widths[0::2], "mid_widths": plan.widths[1::2]}


# --- 4. coupling rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["acp", "ucp"])
def test_vgg_consumers_follow_the_kept_channels(layout: str) -> None:
    parent = trained_looking("vgg16_cifar", layout=layout)
    plan = random_plan(parent, seed=7)
    pruned = apply_plan(parent, plan)
    old_layers, new_layers = prunable_layers(parent), prunable_layers(pruned)
    for i, (old, new, keep) in enumerate(zip(old_layers, new_layers, plan.keep, strict=True)):
        assert new.conv.out_channels == new.norm.num_features == len(keep)
        filters = old.conv.weight[keep]
        assert torch.equal(new.conv.weight, filters[:, plan.keep[i - 1]] if i else filters)  # i > 0: a consumer too
        if layout == "acp":
            assert torch.equal(new.conv.bias, old.conv.bias[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(new.norm, name), getattr(old.norm, name)[keep]), name
    head_old, head_new = old_layers[-1].consumers[0], new_layers[-1].consumers[0]
    assert head_new.in_features == len(plan.keep[-1])
    assert torch.equal(head_new.weight, head_old.weight[:, plan.keep[-1]])
    assert torch.equal(head_new.bias, head_old.bias)
    if layout == "ucp":  # the hidden layer's outputs (its BN1d, the classifier) are not pruned
        for key in ("pre_logits.norm.weight", "pre_logits.norm.running_var", "fc.weight", "fc.bias"):
            assert torch.equal(pruned.state_dict()[key], parent.state_dict()[key]), key


def test_bottleneck_conv3_takes_the_mid_width_and_residual_widths_stay() -> None:
    parent, _, input_size = family("resnet50")
    plan = random_plan(parent, seed=11)
    pruned = apply_plan(parent, plan)
    blocks = zip(residual_blocks(parent), residual_blocks(pruned), plan.keep[0::2], plan.keep[1::2], strict=True)
    for old, new, inner, mid in blocks:
        assert new.conv1.out_channels == new.bn1.num_features == new.conv2.in_channels == len(inner)
        assert new.conv2.out_channels == new.bn2.num_features == new.conv3.in_channels == len(mid)
        assert new.conv3.out_channels == new.bn3.num_features == old.conv3.out_channels
        assert new.conv2.stride == old.conv2.stride
        assert torch.equal(new.conv1.weight, old.conv1.weight[inner])
        assert torch.equal(new.conv2.weight, old.conv2.weight[mid][:, inner])
        assert torch.equal(new.conv3.weight, old.conv3.weight[:, mid])
    # The stem, every shortcut, every block's output BN and the classifier are the parent's.
    parent_state, pruned_state = parent.state_dict(), pruned.state_dict()
    assert parent_state.keys() == pruned_state.keys()
    for key, value in parent_state.items():
        if not any(part in key for part in PRUNED_BOTTLENECK_PARTS):
            assert torch.equal(pruned_state[key], value), key
    with torch.no_grad():
        x = images(input_size)
        assert pruned.forward_features(x).shape == parent.forward_features(x).shape == (2, 2048, 2, 2)


# --- 5. pruning dead channels keeps the function (VGG) --------------------------------------------------------


@pytest.mark.parametrize("layout", ["acp", "ucp"])
def test_pruning_vgg_channels_without_outgoing_weights_keeps_logits(layout: str) -> None:
    parent = trained_looking("vgg16_cifar", layout=layout)
    plan = random_plan(parent, seed=13)
    with torch.no_grad():
        for layer, keep in zip(prunable_layers(parent), plan.keep, strict=True):
            dropped = torch.ones(layer.width, dtype=torch.bool)
            dropped[keep] = False
            layer.consumers[0].weight[:, dropped] = 0.0
    x = images(CIFAR, n=4)
    expected = logits(parent, x)
    torch.testing.assert_close(logits(apply_plan(parent, plan), x), expected, rtol=1e-4, atol=1e-5)
    # The check can fail: keeping other channels (some of them dead) changes the function.
    other = PrunePlan([torch.arange(len(k)) for k in plan.keep])
    assert not torch.allclose(logits(apply_plan(parent, other), x), expected, rtol=1e-3, atol=1e-3)


# --- 6. importance criteria -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family_id", ["vgg16-ucp", "resnet50"])
def test_weight_criteria_score_every_layer(family_id: str) -> None:
    model, _, _ = family(family_id)
    layers = prunable_layers(model)
    l1, gamma = l1_filter_norm(model), bn_scale(model)
    assert [len(s) for s in l1] == [len(s) for s in gamma] == layer_widths(model)
    for layer, scores in zip(layers, l1, strict=True):
        torch.testing.assert_close(scores, layer.conv.weight.detach().abs().flatten(1).sum(dim=1))
    for layer, scores in zip(layers, gamma, strict=True):
        assert torch.equal(scores, layer.norm.weight.detach().abs())


def test_mean_feature_maps_of_vgg_match_hand_computation() -> None:
    model = trained_looking("vgg16_cifar")
    x = images(CIFAR, n=3)
    got = mean_feature_maps(model, [x[:2], x[2:]])
    expected, out = [], x
    with torch.no_grad():
        for stage in range(1, 6):
            for module in getattr(model, f"stage{stage}"):
                if isinstance(module, VggBlock):
                    expected.append(module.conv(out).flatten(2).mean(dim=0))
                out = module(out)
    assert len(got) == len(expected) == 13
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_mean_feature_maps_of_bottlenecks_follow_the_strides() -> None:
    model, _, input_size = family("resnet50")
    maps = mean_feature_maps(model, [images(input_size, n=1)])
    assert [m.shape[0] for m in maps] == layer_widths(model)
    # 64x64 input: 16x16 after the stem; each stage's first conv2 strides (stages 2-4).
    sides = [16] * 6 + [16, 8] + [8] * 6 + [8, 4] + [4] * 10 + [4, 2] + [2] * 4
    assert [m.shape[1] for m in maps] == [s * s for s in sides]


def test_mean_gates_need_gated_layers() -> None:
    with pytest.raises(TypeError, match="mseb"):
        mean_gates(trained_looking("vgg16_cifar"), [images(CIFAR)])


# --- 7. the L1 baseline reaches a FLOPs budget ----------------------------------------------------------------


@pytest.mark.parametrize("family_id", ["vgg16-acp", "resnet50"])
def test_l1_plan_halves_the_measured_flops(family_id: str) -> None:
    model, _, input_size = family(family_id)
    plan = l1_plan(model, 0.5, input_size)
    pruned = apply_plan(model, plan)
    cut = 1.0 - count_macs(pruned, input_size)["flops"] / count_macs(model, input_size)["flops"]
    assert 0.5 <= cut <= 0.55
    ratios = [w / full for w, full in zip(plan.widths, layer_widths(model), strict=True)]
    assert max(ratios) - min(ratios) < 0.1  # one uniform keep ratio (up to rounding)
    for scores, keep in zip(l1_filter_norm(model), plan.keep, strict=True):
        dropped = torch.ones(len(scores), dtype=torch.bool)
        dropped[keep] = False
        if dropped.any():
            assert float(scores[keep].min()) >= float(scores[dropped].max())


# ------------------------------------------------------------------------------- UCP's MSEB placements


@pytest.mark.parametrize("layout", ["acp", "ucp"])
def test_vgg_mseb_gates_every_conv_before_its_bn_and_scores_channels(layout: str) -> None:
    model = timm.create_model("vgg16_cifar", mseb=True, layout=layout).eval()
    layers = prunable_layers(model)
    assert all(isinstance(layer.gate, MSEB) and layer.gate.fc2.out_features == layer.width for layer in layers)
    gates = mean_gates(model, [torch.randn(2, 3, 32, 32)])
    assert [len(g) for g in gates] == [layer.width for layer in layers]
    plain = apply_plan(model, keep_all(model), drop_mseb=True)
    assert not any(isinstance(m, MSEB) for m in plain.modules())
    assert "mseb" not in pruned_model_args(plain)


def test_vgg_ucp_layout_leaves_the_gates_their_default_init() -> None:
    """N(0, 0.01) gate weights (UCP's Linear init) leave the gates stuck near 0.5; the head keeps that init."""
    model = timm.create_model("vgg16_cifar", layout="ucp", mseb=True)
    gates = [m for m in model.modules() if isinstance(m, MSEB)]
    assert len(gates) == 13
    for gate in gates:
        for layer in (gate.fc1, gate.fc2):
            bound = 1 / layer.in_features**0.5  # PyTorch's default: U(-bound, bound)
            weight = layer.weight.detach()
            assert float(weight.abs().max()) <= bound and float(weight.std()) > 0.4 * bound
    assert abs(float(model.pre_logits.fc.weight.detach().std()) - 0.01) < 0.002


@pytest.mark.parametrize("name, gated", [("resnet18_dense", ["inner_widths"]), ("resnet50_dense", ["mid_widths"])])
def test_imagenet_resnet_mseb_gates_the_layers_ucp_prunes(name: str, gated: list[str]) -> None:
    """Basic block: after BN1 (UCP's ImageNet code); bottleneck: the middle 3×3 after its BN-ReLU."""
    model = timm.create_model(name, mseb=True).eval()
    layers = prunable_layers(model)
    assert sorted({layer.model_arg for layer in layers if layer.gate is not None}) == gated
    assert all((layer.gate is not None) == (layer.model_arg in gated) for layer in layers)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(apply_plan(model, keep_all(model))(x), model(x), rtol=0, atol=0)
    rebuilt = timm.create_model(name, **pruned_model_args(model))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_ucp_plan_on_bottlenecks_prunes_each_middle_conv_by_its_own_count() -> None:
    model = timm.create_model("resnet50_dense", mseb=True).eval()
    plan, gates = ucp_plan(model, [torch.randn(2, 3, 64, 64)], threshold_factor=1.0)
    layers = prunable_layers(model)
    counts = iter(important_counts(gates, 1.0))
    for layer, keep in zip(layers, plan.keep, strict=True):
        expected = max(1, next(counts)) if layer.model_arg == "mid_widths" else layer.width
        assert len(keep) == expected, layer.name


# ------------------------------------------------------------------------------- ACP's search dimensions


def test_acp_shares_one_width_per_bottleneck_between_conv1_and_conv2() -> None:
    model, _, input_size = family("resnet50")
    dims = search_dimensions(model)
    assert len(dims) == 16 and all(len(d) == 2 for d in dims)  # the reference's 16 dimensions for ResNet-50
    position = list(range(1, 17))
    widths = layer_widths_at(model, position)
    assert widths[0::2] == widths[1::2] == position  # conv1 and conv2 of block k both at position[k]
    assert dimension_bounds(model) == [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    child = inherit_by_l1(model, position)
    assert pruned_model_args(child) == {"inner_widths": position, "mid_widths": position}
    maps = [images(input_size, n=2)]
    assert len(cluster_widths(model, maps, eps=0.05, min_samples=2)) == 16


@pytest.mark.parametrize("family_id, count", [("vgg16-acp", 13), ("resnet18", 8)])
def test_acp_has_one_dimension_per_layer_elsewhere(family_id: str, count: int) -> None:
    model, _, _ = family(family_id)
    assert search_dimensions(model) == [[i] for i in range(count)]
    with pytest.raises(ValueError, match="search dimensions"):
        layer_widths_at(model, [1] * (count + 1))


def test_ucp_unpruned_layers_keep_every_channel() -> None:
    model = trained_looking("vgg16_cifar", layout="ucp", mseb=True)
    batches = [images(CIFAR, n=2)]
    plan, gates = ucp_plan(model, batches, threshold_factor=1.0)
    assert all(w < full for w, full in zip(plan.widths, layer_widths(model), strict=True))
    kept_whole, _ = ucp_plan(model, batches, threshold_factor=1.0, unpruned=[1, 12])
    assert kept_whole.widths[1] == 64 and kept_whole.widths[12] == 512
    assert [w for i, w in enumerate(kept_whole.widths) if i not in (1, 12)] == [
        w for i, w in enumerate(plan.widths) if i not in (1, 12)
    ]
    with pytest.raises(ValueError, match="within 0..12"):
        ucp_plan(model, batches, threshold_factor=1.0, unpruned=[13])
