"""Channel pruning (zoo/prune): plans, applying them, criteria, UCP/ACP/L1/AIP rules, on tiny CIFAR ResNets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import zoo  # noqa: F401  (registers the timm architectures)
from training.objectives import ObjectiveContext, get_objective
from zoo.measure import count_macs
from zoo.models.cifar_resnet import OptionAShortcut
from zoo.nn.mseb import MSEB
from zoo.prune import PrunePlan, apply_plan, keep_top, prunable_blocks, pruned_model_args
from zoo.prune.acp import inherit_by_l1
from zoo.prune.aip import AIPSettings, attention_transfer_loss, distillation_loss, step_reductions
from zoo.prune.budget import widths_for_reduction
from zoo.prune.clustering import dbscan_width
from zoo.prune.importance import bn_scale, l1_filter_norm, mean_feature_maps, mean_gates
from zoo.prune.l1 import l1_plan
from zoo.prune.plan import inner_widths, keep_all, uniform_stage_widths
from zoo.prune.swarm import SwarmSettings, inertia, initial_swarm, particle_swarm
from zoo.prune.ucp import important_counts, ucp_plan

INPUT_SIZE = (1, 28, 28)
RESNET20_WIDTHS = [16] * 3 + [32] * 3 + [64] * 3


def resnet(name="resnet20", seed=0, **kwargs):
    """A "trained-looking" model in eval mode: random weights and random BN affine parameters and statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(name, in_chans=1, num_classes=10, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
    return model.eval()


def images(n=4, seed=1):
    return torch.randn(n, *INPUT_SIZE, generator=torch.Generator().manual_seed(seed))


def random_plan(widths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for w in widths:
        k = int(torch.randint(1, w + 1, (1,), generator=gen))
        keep.append(torch.randperm(w, generator=gen)[:k].sort().values)
    return PrunePlan(keep)


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


# --- 1. identity plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mseb", [False, True])
def test_identity_plan_gives_bit_identical_logits(mseb):
    model = resnet(mseb=mseb)
    x = images()
    before = state_copy(model)
    pruned = apply_plan(model, keep_all(model))
    assert_same_state(before, model)
    assert pruned is not model
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    assert_same_state(before, pruned)


def test_apply_plan_leaves_parent_untouched():
    model = resnet(mseb=True)
    before = state_copy(model)
    modules_before = [type(m) for m in model.modules()]
    pruned = apply_plan(model, random_plan(RESNET20_WIDTHS), drop_mseb=True)
    assert_same_state(before, model)
    assert [type(m) for m in model.modules()] == modules_before
    assert inner_widths(model) == RESNET20_WIDTHS
    assert inner_widths(pruned) != RESNET20_WIDTHS


# --- 2. coupling rules -----------------------------------------------------------------------------------


def test_random_plan_respects_coupling_and_copies_kept_weights():
    parent = resnet()
    plan = random_plan(RESNET20_WIDTHS, seed=3)
    pruned = apply_plan(parent, plan)
    stage_out = [16] * 3 + [32] * 3 + [64] * 3
    blocks = zip(prunable_blocks(parent), prunable_blocks(pruned), plan.keep, stage_out, strict=True)
    for old, new, keep, out_chs in blocks:
        k = len(keep)
        assert new.conv1.out_channels == new.bn1.num_features == new.conv2.in_channels == k
        assert new.conv1.in_channels == old.conv1.in_channels
        assert new.conv1.stride == old.conv1.stride
        assert new.conv2.out_channels == new.bn2.num_features == out_chs
        assert type(new.shortcut) is type(old.shortcut)
        if isinstance(old.shortcut, OptionAShortcut):
            assert (new.shortcut.stride, new.shortcut.pad_front, new.shortcut.pad_back) == (
                old.shortcut.stride,
                old.shortcut.pad_front,
                old.shortcut.pad_back,
            )
        assert torch.equal(new.conv1.weight, old.conv1.weight[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(new.bn1, name), getattr(old.bn1, name)[keep]), name
        assert int(new.bn1.num_batches_tracked) == 123
        assert new.bn1.eps == old.bn1.eps and new.bn1.momentum == old.bn1.momentum
        assert torch.equal(new.conv2.weight, old.conv2.weight[:, keep])
        assert torch.equal(new.bn2.weight, old.bn2.weight)
    # Everything outside the pruned layers is the parent's, unchanged.
    parent_state, pruned_state = parent.state_dict(), pruned.state_dict()
    assert parent_state.keys() == pruned_state.keys()
    for key, value in parent_state.items():
        if not any(part in key for part in (".conv1.", ".bn1.", ".conv2.")):
            assert torch.equal(pruned_state[key], value), key
    assert pruned.training == parent.training
    with torch.no_grad():
        assert pruned(images()).shape == (4, 10)


def test_pruned_model_trains_in_train_mode():
    pruned = apply_plan(resnet(), random_plan(RESNET20_WIDTHS, seed=5)).train()
    loss = F.cross_entropy(pruned(images(8)), torch.arange(8))
    loss.backward()
    assert all(p.grad is not None for p in pruned.parameters())


# --- 3. pruning dead channels keeps the function ---------------------------------------------------------


def test_pruning_channels_without_outgoing_effect_keeps_logits():
    parent = resnet()
    plan = random_plan(RESNET20_WIDTHS, seed=7)
    with torch.no_grad():
        for block, keep in zip(prunable_blocks(parent), plan.keep, strict=True):
            dropped = torch.ones(block.conv2.in_channels, dtype=torch.bool)
            dropped[keep] = False
            block.conv2.weight[:, dropped] = 0.0
    x = images()
    with torch.no_grad():
        expected = parent(x)
        assert torch.allclose(apply_plan(parent, plan)(x), expected, rtol=1e-5, atol=1e-5)
        # The check can fail: keeping other channels (some of them zeroed) changes the function.
        other = PrunePlan([torch.arange(len(k)) for k in plan.keep])
        assert not torch.allclose(apply_plan(parent, other)(x), expected, rtol=1e-3, atol=1e-3)


# --- 4. model args rebuild the pruned shape --------------------------------------------------------------


def assert_rebuilds(pruned, name):
    args = pruned_model_args(pruned)
    rebuilt = timm.create_model(name, in_chans=1, num_classes=10, **args).eval()
    expected = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == expected
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    x = images(2)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))
    return args


def test_pruned_model_args_rebuild_resnet20():
    plan = random_plan(RESNET20_WIDTHS, seed=11)
    args = assert_rebuilds(apply_plan(resnet(), plan), "resnet20")
    assert args == {"inner_widths": plan.widths}


def test_pruned_model_args_rebuild_resnet56_l1():
    parent = resnet("resnet56")
    plan = random_plan(inner_widths(parent), seed=13)
    assert len(plan.keep) == 27
    args = assert_rebuilds(apply_plan(parent, plan), "resnet56_l1")
    assert args == {"inner_widths": plan.widths}


def test_pruned_model_args_of_se_model():
    parent = resnet(mseb=True)
    plan = random_plan(RESNET20_WIDTHS, seed=17)
    assert "mseb" not in assert_rebuilds(apply_plan(parent, plan, drop_mseb=True), "resnet20")
    # Gates sliced within the first stage keep MSEB's small-layer shape (1 hidden unit, biased): rebuildable.
    first_stage = PrunePlan([*plan.keep[:3], *keep_all(parent).keep[3:]])
    assert assert_rebuilds(apply_plan(parent, first_stage), "resnet20")["mseb"] is True
    # A 32-wide MSEB cut to fewer channels keeps its 2 hidden units; mseb=True would build a different gate.
    with pytest.raises(ValueError, match="drop_mseb"):
        pruned_model_args(apply_plan(parent, plan))


def test_plan_dict_round_trip():
    plan = random_plan(RESNET20_WIDTHS, seed=19)
    again = PrunePlan.from_dict(plan.to_dict())
    assert again.widths == plan.widths
    assert all(torch.equal(a, b) and a.dtype == torch.long for a, b in zip(again.keep, plan.keep, strict=True))


# --- 5. UCP ----------------------------------------------------------------------------------------------


def test_uniform_stage_widths():
    assert uniform_stage_widths([3, 5, 4, 8, 8, 9, 0, 0, 1], list("aaabbbccc")) == [4, 4, 4, 8, 8, 8, 1, 1, 1]
    assert uniform_stage_widths([2, 6, 10, 12], list("aabb")) == [4, 4, 11, 11]
    with pytest.raises(ValueError):
        uniform_stage_widths([1, 2, 3, 4], list("aaa"))


def test_important_counts():
    gates = [torch.tensor([0.9, 0.1, 0.5, 0.5]), torch.tensor([0.2, 0.2, 0.2, 0.6])]
    assert important_counts(gates, 1.0) == [1, 1]  # means 0.5 and 0.3; strictly greater
    assert important_counts(gates, 0.5) == [3, 4]  # thresholds 0.25 and 0.15
    assert important_counts(gates, 1.1) == [1, 1]


def test_ucp_plan_is_stage_uniform_and_keeps_top_gates():
    model = resnet(mseb=True)
    batches = [images(4, seed=2), images(2, seed=3)]
    plan, gates = ucp_plan(model, batches, threshold_factor=1.0)
    assert [len(g) for g in gates] == RESNET20_WIDTHS
    for start in (0, 3, 6):
        assert len(set(plan.widths[start : start + 3])) == 1
    assert plan.widths == uniform_stage_widths(important_counts(gates, 1.0), list("aaabbbccc"))
    for g, keep in zip(gates, plan.keep, strict=True):
        assert torch.equal(keep, keep_top([g], [len(keep)]).keep[0])
        dropped = ~torch.isin(torch.arange(len(g)), keep)
        if dropped.any():
            assert float(g[keep].min()) >= float(g[dropped].max())

    plain = apply_plan(model, plan, drop_mseb=True)
    assert not any(isinstance(m, MSEB) for m in plain.modules())
    gated = apply_plan(model, plan, drop_mseb=False)
    for old, new, keep in zip(prunable_blocks(model), prunable_blocks(gated), plan.keep, strict=True):
        assert isinstance(new.se, MSEB)
        assert new.se.fc1.in_features == new.se.fc2.out_features == len(keep)
        assert new.se.fc1.out_features == old.se.fc1.out_features
        assert torch.equal(new.se.fc1.weight, old.se.fc1.weight[:, keep])
        assert torch.equal(new.se.fc2.weight, old.se.fc2.weight[keep])
    with torch.no_grad():
        assert plain(images()).shape == gated(images()).shape == (4, 10)


# --- 6. importance criteria and plans --------------------------------------------------------------------


def test_l1_filter_norm_and_bn_scale_on_known_weights():
    model = resnet()
    block = prunable_blocks(model)[4]  # layer2.1: conv1 is (32, 32, 3, 3)
    signs = torch.tensor([1.0, -1.0]).repeat(16)
    with torch.no_grad():
        block.conv1.weight.copy_((signs * torch.arange(1.0, 33.0))[:, None, None, None].expand(32, 32, 3, 3))
        block.bn1.weight.copy_(signs * torch.arange(32.0) / 4)
    assert torch.equal(l1_filter_norm(model)[4], torch.arange(1.0, 33.0) * 32 * 9)
    assert torch.equal(bn_scale(model)[4], torch.arange(32.0) / 4)
    assert [len(s) for s in l1_filter_norm(model)] == RESNET20_WIDTHS


def test_keep_top_sorted_with_ties_to_lower_index():
    plan = keep_top([torch.tensor([3.0, 1.0, 3.0, 2.0, 5.0]), torch.tensor([1.0, 2.0, 2.0, 2.0])], [3, 2])
    assert plan.keep[0].tolist() == [0, 2, 4]
    assert plan.keep[1].tolist() == [1, 2]
    assert keep_top([torch.zeros(4)], [2]).keep[0].tolist() == [0, 1]
    for width in (0, 5):
        with pytest.raises(ValueError):
            keep_top([torch.zeros(4)], [width])


@pytest.mark.parametrize(
    "keep",
    [[], [0, 0], [1, 2, 2], [4], [-1], [0, 1, 2, 3, 4]],
    ids=["empty", "duplicate", "duplicate-later", "too-large", "negative", "too-many"],
)
def test_check_fits_rejects_bad_index_sets(keep):
    with pytest.raises(ValueError):
        PrunePlan([torch.tensor(keep, dtype=torch.long)]).check_fits([4])


def test_check_fits_and_apply_plan_reject_wrong_layer_count():
    PrunePlan([torch.tensor([3, 0])]).check_fits([4])
    with pytest.raises(ValueError):
        PrunePlan([torch.arange(2)]).check_fits([4, 4])
    with pytest.raises(ValueError):
        apply_plan(resnet(), PrunePlan([torch.arange(2)] * 8))


def test_mean_gates_needs_mseb():
    with pytest.raises(TypeError):
        mean_gates(resnet(), [images()])


def test_mean_gates_average_over_all_images():
    model = resnet(mseb=True)
    x = images(6)
    with torch.no_grad():
        model(x)
    expected = [block.se.last_gates.mean(dim=0) for block in prunable_blocks(model)]
    got = mean_gates(model, [x[:4], x[4:]])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def hand_feature_maps(model, x):
    """Each block's conv1 output, by running the network block by block (no hooks)."""
    maps = []
    with torch.no_grad():
        out = model.act1(model.bn1(model.conv1(x)))
        for stage in (model.layer1, model.layer2, model.layer3):
            for block in stage:
                maps.append(block.conv1(out))
                out = block(out)
    return maps


def test_mean_feature_maps_match_hand_computation():
    model = resnet().train()
    x = images(6)
    got = mean_feature_maps(model, [x[:4], x[4:]])
    assert model.training  # mode restored
    assert all(not block.conv1._forward_hooks for block in prunable_blocks(model))  # hooks removed
    expected = hand_feature_maps(model.eval(), x)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (e.shape[1], e.shape[2] * e.shape[3])
        torch.testing.assert_close(g, e.flatten(2).mean(dim=0), rtol=1e-5, atol=1e-6)
    assert [g.shape[1] for g in got] == [28 * 28] * 3 + [14 * 14] * 3 + [7 * 7] * 3


# --- 7. DBSCAN widths ------------------------------------------------------------------------------------


def clustered_features(clusters=3, per_cluster=6, isolated=2, dims=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    eye = torch.eye(dims)
    rows = []
    for c in range(clusters):
        for _ in range(per_cluster):
            scale = 1.0 + 4.0 * torch.rand(1, generator=gen)  # the length does not matter to cosine distance
            rows.append(scale * (eye[c] + 1e-4 * torch.randn(dims, generator=gen)))
    rows += [eye[clusters + i] for i in range(isolated)]
    return torch.stack(rows)


def test_dbscan_width_counts_clusters_plus_noise():
    assert dbscan_width(clustered_features(), eps=0.01, min_samples=5) == 3 + 2
    assert dbscan_width(clustered_features(clusters=1, isolated=0), eps=0.01, min_samples=5) == 1
    # Fewer near-parallel points than min_samples form no cluster: each one is noise.
    assert dbscan_width(clustered_features(clusters=1, per_cluster=4, isolated=1), eps=0.01, min_samples=5) == 5


def test_dbscan_width_counts_zero_rows_as_noise():
    features = torch.cat([clustered_features(), torch.zeros(2, 12)])
    assert dbscan_width(features, eps=0.01, min_samples=5) == 3 + 2 + 2
    assert dbscan_width(torch.zeros(4, 12), eps=0.01) == 4


@pytest.mark.parametrize("shape", [(12,), (2, 3, 4), (0, 12)])
def test_dbscan_width_rejects_non_matrices(shape):
    with pytest.raises(ValueError):
        dbscan_width(torch.ones(shape), eps=0.01)


# --- 8. particle swarm -----------------------------------------------------------------------------------

TARGET = [3, 7, 12, 16, 1, 9]
UPPER = [16] * 6
CENTER = [8] * 6
SWARM = SwarmSettings(cycles=40, dims_per_move=6)


def distance_fitness(seen=None):
    def fitness(x):
        if seen is not None:
            seen.append(list(x))
        return -float(sum(abs(a - b) for a, b in zip(x, TARGET, strict=True)))

    return fitness


def test_swarm_finds_the_optimum_within_bounds():
    seen = []
    result = particle_swarm(distance_fitness(seen), CENTER, UPPER, SWARM)
    assert result.best_position == TARGET
    assert result.best_fitness == 0.0
    assert seen[0] == CENTER  # particle 0 is the centre
    assert all(1 <= v <= 16 for position in seen for v in position)
    assert result.evaluations == len(seen)  # memoised: every distinct position evaluated once
    assert len({tuple(p) for p in seen}) == len(seen)
    assert len(result.history) == SWARM.cycles + 1
    fitnesses = [h["best_fitness"] for h in result.history]
    assert fitnesses == sorted(fitnesses)


def test_swarm_respects_per_dimension_upper_bounds():
    upper = [2, 3, 4, 5, 6, 7]
    seen = []
    result = particle_swarm(distance_fitness(seen), [1] * 6, upper, SWARM)
    assert all(1 <= v <= u for position in seen for v, u in zip(position, upper, strict=True))
    assert any(position[0] == 2 for position in seen)  # the bound is reached (clipped), not avoided
    assert result.best_fitness >= distance_fitness()([1] * 6)


def test_initial_swarm():
    swarm = initial_swarm([5, 1, 16], [16, 16, 16], 10, np.random.default_rng(0))
    assert swarm.shape == (10, 3)
    assert swarm[0].tolist() == [5, 1, 16]
    assert swarm.min() >= 1 and swarm.max() <= 16


def test_inertia_schedule():
    assert inertia(0, 8) == pytest.approx(0.6, abs=1e-12)
    assert inertia(7, 8) == pytest.approx(0.425, abs=1e-12)
    assert inertia(8, 8) == pytest.approx(0.4, abs=1e-12)


def test_swarm_memo_replays_without_fitness(tmp_path):
    memo = tmp_path / "fitness.json"
    settings = SwarmSettings(cycles=5, seed=3)
    first = particle_swarm(distance_fitness(), CENTER, UPPER, settings, memo_path=memo)
    assert memo.exists()

    def must_not_run(x):
        raise AssertionError("fitness evaluated although memoised")

    again = particle_swarm(must_not_run, CENTER, UPPER, settings, memo_path=memo)
    assert again.best_position == first.best_position
    assert again.best_fitness == first.best_fitness
    assert again.history == first.history


def test_swarm_resumes_after_interruption(tmp_path):
    settings = SwarmSettings(cycles=5, seed=4)
    whole = particle_swarm(distance_fitness(), CENTER, UPPER, settings)
    memo = tmp_path / "fitness.json"
    calls = []

    def interrupted(x):
        if len(calls) == 17:
            raise KeyboardInterrupt
        calls.append(x)
        return distance_fitness()(x)

    with pytest.raises(KeyboardInterrupt):
        particle_swarm(interrupted, CENTER, UPPER, settings, memo_path=memo)
    resumed_calls = []
    resumed = particle_swarm(distance_fitness(resumed_calls), CENTER, UPPER, settings, memo_path=memo)
    assert len(resumed_calls) == whole.evaluations - 17
    assert not {tuple(p) for p in resumed_calls} & {tuple(p) for p in calls}
    assert (resumed.best_position, resumed.best_fitness, resumed.history) == (
        whole.best_position,
        whole.best_fitness,
        whole.history,
    )
    assert resumed.evaluations == whole.evaluations


# --- 9. FLOPs budgets and L1 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_flops_widths():
    return widths_for_reduction(resnet(), 0.5, INPUT_SIZE)


def flops(model):
    return count_macs(model, INPUT_SIZE)["flops"]


def test_widths_for_half_the_flops(half_flops_widths):
    parent = resnet()
    pruned = apply_plan(parent, PrunePlan([torch.arange(w) for w in half_flops_widths]))
    cut = 1.0 - flops(pruned) / flops(parent)
    assert 0.5 <= cut <= 0.55
    ratios = [w / full for w, full in zip(half_flops_widths, RESNET20_WIDTHS, strict=True)]
    assert max(ratios) - min(ratios) < 0.1  # one uniform keep ratio (up to rounding)


def test_widths_for_reduction_bounds():
    model = resnet()
    assert widths_for_reduction(model, 0.0, INPUT_SIZE) == RESNET20_WIDTHS
    for reduction in (1.0, -0.1):
        with pytest.raises(ValueError):
            widths_for_reduction(model, reduction, INPUT_SIZE)


def test_l1_plan_keeps_the_largest_filters(half_flops_widths):
    model = resnet()
    plan = l1_plan(model, 0.5, INPUT_SIZE)
    assert plan.widths == half_flops_widths
    for scores, keep in zip(l1_filter_norm(model), plan.keep, strict=True):
        dropped = torch.ones(len(scores), dtype=torch.bool)
        dropped[keep] = False
        assert float(scores[keep].min()) >= float(scores[dropped].max())
        assert keep.tolist() == sorted(keep.tolist())


def test_inherit_by_l1_is_top_l1_plan():
    parent = resnet()
    widths = [w // 2 for w in RESNET20_WIDTHS]
    child = inherit_by_l1(parent, widths)
    expected = apply_plan(parent, keep_top(l1_filter_norm(parent), widths))
    assert inner_widths(child) == widths
    assert_same_state(state_copy(expected), child)


# --- 10. AIP ---------------------------------------------------------------------------------------------


def test_aip_step_trains_student_and_discriminator_only():
    teacher = resnet()
    student = apply_plan(teacher, random_plan(RESNET20_WIDTHS, seed=23)).train()
    teacher.requires_grad_(False).eval()
    student_before, teacher_before = state_copy(student), state_copy(teacher)
    objective = get_objective("aip", 10, AIPSettings())
    d_before = state_copy(objective.discriminator)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)

    x, y = images(8), torch.arange(8) % 10
    loss = objective(student, x, y, ObjectiveContext(teacher=teacher))
    d_grads = [p.grad.clone() for p in objective.discriminator.parameters()]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    # The student's adversarial term does not reach the discriminator.
    for p, g in zip(objective.discriminator.parameters(), d_grads, strict=True):
        assert torch.equal(p.grad, g)
    student_params = dict(student.named_parameters())
    for name, p in student_params.items():
        assert not torch.equal(p, student_before[name]), name
    for name, value in objective.discriminator.state_dict().items():
        assert not torch.equal(value, d_before[name]), name
    assert_same_state(teacher_before, teacher)
    assert all(p.grad is None for p in teacher.parameters())


def test_aip_objective_needs_teacher():
    objective = get_objective("aip", 10)
    with pytest.raises(ValueError):
        objective(resnet(), images(2), torch.tensor([0, 1]), ObjectiveContext())


def test_aip_state_dict_round_trip():
    teacher = resnet().requires_grad_(False)
    student = resnet(seed=1).train()
    objective = get_objective("aip", 10, AIPSettings())
    objective(student, images(8), torch.arange(8), ObjectiveContext(teacher=teacher))
    saved = copy.deepcopy(objective.state_dict())

    torch.manual_seed(99)
    restored = get_objective("aip", 10, AIPSettings())
    restored.load_state_dict(saved)
    assert_same_state(state_copy(objective.discriminator), restored.discriminator)
    momenta = [restored.optimizer.state[p]["momentum_buffer"] for p in restored.discriminator.parameters()]
    expected = [objective.optimizer.state[p]["momentum_buffer"] for p in objective.discriminator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momenta, expected, strict=True))


def test_attention_transfer_loss():
    maps = [torch.randn(2, 16, 7, 7), torch.randn(2, 32, 4, 4)]
    assert float(attention_transfer_loss(maps, [m.clone() for m in maps])) == 0.0
    # Attention maps are normalised: scaling a stage's features does not change its map.
    torch.testing.assert_close(attention_transfer_loss(maps, [3 * m for m in maps]), torch.tensor(0.0))
    assert float(attention_transfer_loss(maps, [torch.randn_like(m) for m in maps])) > 0.0


def test_distillation_loss_limits():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    labels = torch.arange(8)
    ce = F.cross_entropy(student, labels)
    assert torch.equal(distillation_loss(student, teacher, labels, temperature=20.0, alpha=0.0), ce)
    assert float(distillation_loss(student, student.clone(), labels, temperature=4.0, alpha=1.0)) == 0.0
    kl = F.kl_div(F.log_softmax(student / 4, 1), F.softmax(teacher / 4, 1), reduction="batchmean")
    torch.testing.assert_close(
        distillation_loss(student, teacher, labels, temperature=4.0, alpha=0.3), 0.3 * 16 * kl + 0.7 * ce
    )


def test_step_reductions():
    assert step_reductions(0.5, 4) == [0.125, 0.25, 0.375, 0.5]
    assert step_reductions(0.6, 1) == [0.6]
    with pytest.raises(ValueError):
        step_reductions(0.5, 0)
