"""The released checkpoints' targets (zoo.targets): judged on means of seeds, shown in cards and by `zoo targets`."""

from __future__ import annotations

import json
import statistics
from typing import Any

from zoo.cards import render_card
from zoo.cli import main
from zoo.leaderboard import markdown
from zoo.registry import load_manifest
from zoo.targets import MIN_SEEDS, all_targets, release_targets


def _release(method: str, top1: list[float], flops: float, parent: str | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"dataset": "fashion_mnist", "top1": top1[-1]}
    if len(top1) > 1:
        metrics["seeds"] = {"n": len(top1), "top1": top1, "top1_mean": statistics.fmean(top1),
                            "top1_std": statistics.stdev(top1)}  # fmt: skip
    return {"architecture": "a", "compression": {"method": method, "dense_parent": parent, "flops": flops},
            "metrics": metrics}  # fmt: skip


def _verdicts(checkpoint_id: str, releases: dict[str, dict[str, Any]]) -> list[bool | None]:
    return [check.met for check in release_targets(checkpoint_id, releases)]


def test_a_pruned_net_is_judged_against_its_parent_and_l1_on_means_of_seeds() -> None:
    releases = {
        "parent": _release("dense", [94.6, 94.5, 94.7], 100e6),
        "l1": _release("l1", [94.3, 94.4, 94.2], 45e6, "parent"),
        "aip": _release("aip", [94.6, 94.6, 94.7], 45e6, "parent"),  # met everywhere
        "ucp": _release("ucp", [94.0, 94.1, 93.9], 50e6, "parent"),  # 0.6 under the parent, under L1
        "acp": _release("acp", [94.9], 70e6, "parent"),  # one seed: accuracy targets not evaluable; cut too small
    }
    assert _verdicts("aip", releases) == [True, True, True]
    assert _verdicts("ucp", releases) == [True, False, False]
    assert _verdicts("acp", releases) == [False, None, None]
    assert _verdicts("l1", releases) == [] and _verdicts("parent", releases) == []
    del releases["parent"]
    assert _verdicts("aip", releases) == []  # no released parent to measure the cut and the drop against


def test_a_one_bit_net_must_beat_the_plain_one_by_one_std_and_stay_near_the_float_parent() -> None:
    releases = {
        "float": _release("dense", [94.7, 94.6, 94.8], 30e6),
        "bnn": _release("bnn", [92.0, 92.4, 91.6], 1e5, "float"),  # mean 92.0, std 0.4
        "sdbnn": _release("sdbnn", [92.3, 92.3, 92.3], 1e5, "float"),  # +0.3: under one std
        "ir2net": _release("ir2net", [92.5, 92.5, 92.5], 1e5, "float"),  # +0.5: above one std, 2.2 under the parent
    }
    assert _verdicts("sdbnn", releases) == [False, True]
    assert _verdicts("ir2net", releases) == [True, True]
    releases["float"] = _release("dense", [95.6, 95.6, 95.6], 30e6)
    assert _verdicts("ir2net", releases) == [True, False]  # 3.1 points under the parent


def test_imagenet_style_ir2net_must_beat_bireal_at_the_same_schedule() -> None:
    releases = {
        "dense18": _release("dense", [94.0] * MIN_SEEDS, 50e6),
        "bireal": _release("bireal", [91.0, 91.2, 91.1], 2e6, "dense18"),
        "ir2net": _release("ir2net", [91.2, 91.3, 91.1], 2e6, "dense18"),
        "sdbnn": _release("sdbnn", [92.0] * MIN_SEEDS, 2e6, "dense18"),  # no target against Bi-Real
    }
    assert [c.target for c in release_targets("ir2net", releases)] == ["above `bireal` at the same schedule (means)"]
    assert _verdicts("ir2net", releases) == [True] and _verdicts("sdbnn", releases) == []


def test_the_cards_and_zoo_targets_show_the_released_checkpoints_targets(capsys) -> None:
    from zoo.registry import models_dir

    checks = all_targets(load_manifest())
    assert {c.checkpoint_id for c in checks} >= {"resnet20_sdbnn.fmnist", "resnet56_ucp.fmnist"}
    main(["targets", "--json"])
    assert json.loads(capsys.readouterr().out) == [vars(c) for c in checks]
    config = json.loads((models_dir() / "resnet20_sdbnn.fmnist" / "config.json").read_text())
    card = render_card(config)
    assert "## Targets" in card and "above `resnet20_bnn.fmnist` by more than one std" in card
    parent = json.loads((models_dir() / "resnet20.fmnist" / "config.json").read_text())
    assert "## Targets" not in render_card(parent)
    board = markdown([])
    assert "## Targets" in board and "| `resnet20_sdbnn.fmnist` | above `resnet20_bnn.fmnist`" in board
