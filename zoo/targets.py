"""The targets the released checkpoints are held to (issue 14), checked on their measured numbers.

Each target compares the mean top-1 over a release's seeds (its single top-1 without seeds) with the mean of a
reference release: the dense parent, or the baseline of the same parent (L1 for the channel-pruned nets, the plain
1-bit net for the 1-bit methods). A target is stated on means of at least :data:`MIN_SEEDS` seeds, so with fewer on
either side it is reported as not yet evaluable, numbers shown. ``zoo targets`` prints them; every card shows its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_SEEDS = 3
PRUNING_METHODS = ("ucp", "acp", "aip")
BINARY_METHODS = ("sdbnn", "ir2net")
MIN_FLOPS_CUT = 0.40
MAX_PRUNED_DROP = 0.5
MAX_BINARY_GAP = 3.0


@dataclass(frozen=True)
class TargetCheck:
    """One target of one release: what it asks, what was measured, and whether it is met (None: not evaluable)."""

    checkpoint_id: str
    target: str
    measured: str
    met: bool | None


@dataclass(frozen=True)
class _Mean:
    top1: float
    std: float | None
    n: int

    def __str__(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.top1:.2f}{spread} ({self.n} seed{'s' if self.n != 1 else ''})"


def _mean(entry: dict[str, Any]) -> _Mean:
    seeds = entry["metrics"].get("seeds")
    if seeds and seeds["n"] >= 2:
        return _Mean(seeds["top1_mean"], seeds["top1_std"], seeds["n"])
    return _Mean(entry["metrics"]["top1"], None, 1)


def _below(reference: _Mean, mine: _Mean) -> str:
    gap = reference.top1 - mine.top1
    return f"{gap:.2f} points under" if gap >= 0 else f"{-gap:.2f} points above"


def _judged(met: bool, *means: _Mean) -> bool | None:
    return met if all(m.n >= MIN_SEEDS for m in means) else None


def _baseline(releases: dict[str, dict[str, Any]], entry: dict[str, Any], method: str) -> tuple[str, dict] | None:
    """The release of ``method`` with the same dense parent and dataset as ``entry``, if one is released."""
    comp, dataset = entry["compression"], entry["metrics"]["dataset"]
    for other_id, other in sorted(releases.items()):
        same_parent = other["compression"].get("dense_parent") == comp.get("dense_parent")
        if other["compression"]["method"] == method and same_parent and other["metrics"]["dataset"] == dataset:
            return other_id, other
    return None


def _pruning_checks(checkpoint_id: str, entry: dict, releases: dict) -> list[TargetCheck]:
    comp, mine = entry["compression"], _mean(entry)
    parent_id = comp.get("dense_parent")
    if parent_id not in releases:
        return []
    parent = releases[parent_id]
    parent_mean, cut = _mean(parent), 1 - comp["flops"] / parent["compression"]["flops"]
    drop = parent_mean.top1 - mine.top1
    checks = [
        TargetCheck(checkpoint_id, f"≥ {MIN_FLOPS_CUT:.0%} fewer FLOPs than `{parent_id}`",
                    f"{cut:.1%} fewer ({comp['flops'] / 1e6:.1f} M vs {parent['compression']['flops'] / 1e6:.1f} M)",
                    cut >= MIN_FLOPS_CUT),
        TargetCheck(checkpoint_id, f"top-1 drop ≤ {MAX_PRUNED_DROP} points from `{parent_id}` (means)",
                    f"{_below(parent_mean, mine)}: {mine} vs {parent_mean}",
                    _judged(drop <= MAX_PRUNED_DROP, mine, parent_mean)),
    ]  # fmt: skip
    found = _baseline(releases, entry, "l1")
    if found:
        l1_id, l1 = found
        l1_mean = _mean(l1)
        flops = f"FLOPs {comp['flops'] / 1e6:.1f} M vs {l1['compression']['flops'] / 1e6:.1f} M"
        checks.append(TargetCheck(checkpoint_id, f"at least as accurate as `{l1_id}` at the same FLOPs (means)",
                                  f"{mine.top1 - l1_mean.top1:+.2f} points: {mine} vs {l1_mean}; {flops}",
                                  _judged(mine.top1 >= l1_mean.top1, mine, l1_mean)))  # fmt: skip
    return checks


def _binary_checks(checkpoint_id: str, entry: dict, releases: dict) -> list[TargetCheck]:
    """SD-BNN / IR²Net above the plain 1-bit net of their parent by more than one std of its seeds and within
    ``MAX_BINARY_GAP`` of the float parent (the ResNet-20s); IR²Net above Bi-Real (the ResNet-18s)."""
    mine, checks = _mean(entry), []
    plain = _baseline(releases, entry, "bnn")
    if plain:
        plain_id, plain_mean = plain[0], _mean(plain[1])
        margin = plain_mean.std if plain_mean.std is not None else float("inf")
        checks.append(TargetCheck(checkpoint_id, f"above `{plain_id}` by more than one std of its seeds (means)",
                                  f"{mine.top1 - plain_mean.top1:+.2f} points: {mine} vs {plain_mean}",
                                  _judged(mine.top1 > plain_mean.top1 + margin, mine, plain_mean)))  # fmt: skip
        parent_id = entry["compression"].get("dense_parent")
        if parent_id in releases:
            parent_mean = _mean(releases[parent_id])
            gap = parent_mean.top1 - mine.top1
            checks.append(TargetCheck(checkpoint_id, f"within {MAX_BINARY_GAP} points of `{parent_id}` (means)",
                                      f"{_below(parent_mean, mine)}: {mine} vs {parent_mean}",
                                      _judged(gap <= MAX_BINARY_GAP, mine, parent_mean)))  # fmt: skip
    bireal = _baseline(releases, entry, "bireal") if entry["compression"]["method"] == "ir2net" else None
    if bireal:
        bireal_id, bireal_mean = bireal[0], _mean(bireal[1])
        checks.append(TargetCheck(checkpoint_id, f"above `{bireal_id}` at the same schedule (means)",
                                  f"{mine.top1 - bireal_mean.top1:+.2f} points: {mine} vs {bireal_mean}",
                                  _judged(mine.top1 > bireal_mean.top1, mine, bireal_mean)))  # fmt: skip
    return checks


def release_targets(checkpoint_id: str, releases: dict[str, dict[str, Any]]) -> list[TargetCheck]:
    """The targets of ``checkpoint_id`` checked against ``releases`` (id → an entry with ``compression`` and
    ``metrics``, as in the manifest); empty for a release no target names."""
    entry = releases[checkpoint_id]
    method = entry["compression"]["method"]
    if method in PRUNING_METHODS:
        return _pruning_checks(checkpoint_id, entry, releases)
    if method in BINARY_METHODS:
        return _binary_checks(checkpoint_id, entry, releases)
    return []


def all_targets(releases: dict[str, dict[str, Any]]) -> list[TargetCheck]:
    """Every release's targets, in id order."""
    return [check for checkpoint_id in sorted(releases) for check in release_targets(checkpoint_id, releases)]


def verdict(check: TargetCheck) -> str:
    return {True: "met", False: "**missed**", None: f"not evaluable (< {MIN_SEEDS} seeds)"}[check.met]


def targets_table(checks: list[TargetCheck], with_ids: bool = False) -> str:
    """A Markdown table of ``checks`` ("" for none)."""
    if not checks:
        return ""
    head = ["checkpoint"] * with_ids + ["target", "measured", "verdict"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in checks:
        cells = [f"`{c.checkpoint_id}`"] * with_ids + [c.target, c.measured, verdict(c)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
