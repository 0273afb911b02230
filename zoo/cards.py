"""Model cards: ``cards/template.md`` + the method's text in ``cards/methods/<method>.md`` + config.json.

Every number in a card comes from the checkpoint's config.json, which export computed by code.
"""

from __future__ import annotations

import json
import string
from typing import Any

from zoo.inference import PACKED_LAYOUT
from zoo.registry import repo_root

CARDS_DIR = repo_root() / "cards"
METHOD_SECTIONS = ("Summary", "Differences from the paper", "Limitations", "Citation")


def method_text(method: str) -> dict[str, str]:
    """The sections of ``cards/methods/<method>.md``, keyed by their ``## `` heading."""
    text = (CARDS_DIR / "methods" / f"{method}.md").read_text()
    sections: dict[str, str] = {}
    for chunk in text.split("\n## ")[1:]:
        heading, _, body = chunk.partition("\n")
        sections[heading.strip()] = body.strip()
    missing = [s for s in METHOD_SECTIONS if s not in sections]
    if missing:
        raise ValueError(f"cards/methods/{method}.md lacks the sections {missing}")
    return sections


def lineage(meta: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """(parent checkpoint id, Hub ``base_model_relation``, compression tag) of a checkpoint made from another one;
    None for one trained from scratch. An unreleased dense parent is named by its recorded ``dense_reference``.

    The Hub knows four relations (adapter, merge, quantized, finetune): a 1-bit model is ``quantized`` from its
    dense parent; a pruned one takes its widths (for most methods its starting weights too) from its parent, which the
    Hub can only call a ``finetune`` (the tag ``pruned`` says which kind); a fine-tune on new data is a ``finetune``.
    """
    comp = meta["compression"]
    if comp.get("finetuned_from"):
        return comp["finetuned_from"], "finetune", None
    parent = comp.get("dense_parent") or (comp.get("dense_reference") or {}).get("id")
    if parent is None:
        return None
    if meta.get("pruning"):
        return parent, "finetune", "pruned"
    if comp["weight_bits"] == 1:
        return parent, "quantized", "binary"
    raise ValueError(f"{meta['id']} names the dense parent {parent} but is neither pruned nor binary")


def _front_matter(config: dict[str, Any], hf_org: str) -> str:
    meta = config["zoo"]
    comp, metrics = meta["compression"], meta["metrics"]
    parent = lineage(meta)
    tags = ["image-classification", "timm", "compressed-cnn-zoo", comp["method"]]
    if parent and parent[2]:
        tags.append(parent[2])
    lines = [
        "---",
        "license: mit",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags:",
        *[f"- {t}" for t in tags],
        "datasets:",
        f"- {metrics['dataset_hub_id']}",
    ]
    if parent:
        lines += [f"base_model: {hf_org}/{parent[0]}", f"base_model_relation: {parent[1]}"]
    lines += [
        "metrics:",
        "- accuracy",
        "model-index:",
        f"- name: {meta['id']}",
        "  results:",
        "  - task:",
        "      type: image-classification",
        "    dataset:",
        f"      type: {metrics['dataset_hub_id']}",
        f"      name: {metrics['dataset']}",
        f"      split: {metrics['split']}",
        "    metrics:",
        "    - type: accuracy",
        f"      name: top-1 accuracy ({metrics['num_samples']} images)",
        f"      value: {metrics['top1']:.2f}",
        "---",
    ]
    return "\n".join(lines)


def _history_table(history: list[dict[str, Any]]) -> str:
    split = "val" if history and "val_top1" in history[0] else "test"  # val: the held-out training images
    label = "held-out top-1 (%)" if split == "val" else "test top-1 (%)"
    rows = [f"| epoch | train loss | {label} | elapsed (s) |", "| --- | --- | --- | --- |"]
    rows += [f"| {h['epoch']} | {h['train_loss']:.4f} | {h[f'{split}_top1']:.2f} | {h['seconds']} |" for h in history]
    return "\n".join(rows)


def seed_spread(seeds: dict[str, Any] | None) -> str:
    """E.g. ``92.01 ± 0.21 (3 seeds)``: the mean ± sample std of a release's seeds; "" without several seeds."""
    if not seeds or seeds["n"] < 2:
        return ""
    return f"{seeds['top1_mean']:.2f} ± {seeds['top1_std']:.2f} ({seeds['n']} seeds)"


def _seed_rows(metrics: dict[str, Any]) -> str:
    """The spread over the release's seeds and, when the parent has seeds too, the gap between the means."""
    seeds = metrics.get("seeds")
    if not seeds or seeds["n"] < 2:
        return ""
    per_seed = ", ".join(f"seed {s}: {t:.2f}" for s, t in zip(seeds["seeds"], seeds["top1"], strict=True))
    rows = (f"| top-1 over the release's seeds, mean ± std | {seed_spread(seeds)}: {per_seed}; released: seed "
            f"{seeds['released_seed']} ({seeds['released_by']}) |\n")  # fmt: skip
    parent = metrics.get("dense_parent_seeds")
    if parent and parent["n"] >= 2:
        rows += (f"| the dense parent's seeds, mean ± std | {seed_spread(parent)} (this model's mean: "
                 f"{seeds['top1_mean'] - parent['top1_mean']:+.2f} points) |\n")  # fmt: skip
    return rows


def _superseded(meta: dict[str, Any]) -> str:
    """The checkpoints this one replaced, newest first, so a cached older file can be recognised."""
    older = meta.get("supersedes") or []
    if not older:
        return ""
    rows = ["This checkpoint replaces earlier releases under the same id (a cached copy with one of these sha256s",
            "is an older model; loading the id now fetches this one):", "",
            "| sha256 | top-1 (%) | schedule | code commit |", "| --- | --- | --- | --- |"]  # fmt: skip
    rows += [f"| `{r['sha256']}` | {r['top1']:.2f} | {r['schedule']} | `{r['commit']}` |" for r in reversed(older)]
    return "\n".join(rows) + "\n\n"


def _comparison(label: str, reference: float, top1: float) -> str:
    gap = top1 - reference
    return f"| {label} | {reference:.2f} % (this model: {gap:+.2f} points) |\n"


def _unreleased(reference: dict[str, Any]) -> str:
    return f"`{reference['id']}` (not released; recipe `{reference['recipe']}`)"


def _comparison_rows(comp: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Rows comparing the model with its dense parent and, for fine-tuned models, with training from scratch."""
    rows = ""
    if comp.get("dense_parent") and "dense_parent_top1" in metrics:
        rows += _comparison(f"top-1 of the dense parent `{comp['dense_parent']}`, same split",
                            metrics["dense_parent_top1"], metrics["top1"])  # fmt: skip
    elif comp.get("dense_reference"):
        rows += _comparison(f"top-1 of the dense parent {_unreleased(comp['dense_reference'])}, same split",
                            metrics["dense_parent_top1"], metrics["top1"])  # fmt: skip
    if "scratch_top1" in metrics:
        rows += _comparison("same architecture trained from scratch, same data and budget",
                            metrics["scratch_top1"], metrics["top1"])  # fmt: skip
    return rows


def _speed_section(speed: dict[str, Any] | None) -> str:
    if not speed:
        return "Not measured at export; run `zoo bench <id>`."
    rows = ["| model | batch | latency (ms) | images/s |", "| --- | --- | --- | --- |"]
    rows += [f"| {name} | {r['batch']} | {r['ms']:.3f} | {r['images_per_s']:,.0f} |"
             for name, runs in speed["results"].items() for r in runs]  # fmt: skip
    notes = [f"- {name}: {how}" for name, how in speed.get("notes", {}).items()]
    when = "at export"
    if "remeasured" in speed:
        again = speed["remeasured"]
        when = (
            f"again on {again['date']} (after export, `zoo bench <id> --record`, code commit `{again['code_commit']}`)"
        )
    return (
        f"Measured {when} on {speed['cpu']} ({', '.join(speed['cpu_flags']) or 'no SIMD flags read'}), "
        f"{speed['threads']} threads, torch {speed['torch']}, all rows in the same process (medians; the machine "
        "may have been running other jobs, so rerun `zoo bench <id>` for your own numbers):\n\n"
        + "\n".join(rows)
        + ("\n\n" + "\n".join(notes) if notes else "")
    )


def _speedup_at(speed: dict[str, Any] | None, batch: int) -> float | None:
    """Dense parent latency / this model's latency at ``batch``, both measured in the same process."""
    if not speed:
        return None
    results = speed["results"]
    own = [name for name in results if name != "dense parent (fp32)"]
    if "dense parent (fp32)" not in results or not own:
        return None
    ms = {
        name: next((r["ms"] for r in results[name] if r["batch"] == batch), None)
        for name in (own[0], "dense parent (fp32)")
    }
    if None in ms.values():
        return None
    return ms["dense parent (fp32)"] / ms[own[0]]


def _pruning_section(meta: dict[str, Any]) -> str:
    """Before/after table of a channel-pruned checkpoint (params, FLOPs, top-1, measured speed-up)."""
    pruning = meta.get("pruning")
    if not pruning:
        return ""
    before, after = pruning["parent_summary"], meta["compression"]
    reference = after.get("dense_reference")
    parent = _unreleased(reference) if reference else f"`{pruning['parent']}`"
    metrics = meta["metrics"]
    flops_ratio = before["flops"] / after["flops"]
    lines = [
        "## Pruning",
        "",
        f"Parent {parent}; method `{pruning['method']}`; the pruned widths are in `model_args`.",
        "",
        "| | dense parent | this model | change |",
        "| --- | --- | --- | --- |",
        f"| parameters | {before['params']:,} | {after['params']:,} | {after['params'] / before['params'] - 1:+.1%} |",
        f"| FLOPs (MACs) | {before['flops'] / 1e6:.2f} M | {after['flops'] / 1e6:.2f} M | "
        f"{after['flops'] / before['flops'] - 1:+.1%} |",
    ]
    if "dense_parent_top1" in metrics:
        lines.append(f"| top-1 (full test split) | {metrics['dense_parent_top1']:.2f} % | {metrics['top1']:.2f} % | "
                     f"{metrics['top1'] - metrics['dense_parent_top1']:+.2f} points |")  # fmt: skip
    for batch in (1, 64):
        speedup = _speedup_at(meta.get("speed"), batch)
        if speedup is not None:
            lines.append(f"| CPU speed-up at batch {batch} (same process) | 1.00x | {speedup:.2f}x | "
                         f"{speedup / flops_ratio:.2f} of the FLOPs ratio {flops_ratio:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n\n"


def _storage(meta: dict[str, Any]) -> str:
    """How the weights are stored (configs exported before this was recorded: binary packed, all else float32)."""
    storage = meta.get("storage") or {}
    binary = storage.get("binary_weights", PACKED_LAYOUT if meta["compression"]["weight_bits"] == 1 else "none")
    head = storage.get("classifier_weights", "float32")
    return f"binary weights: {binary}; classifier weight matrix: {head}; everything else float32"


def _targets_section(config: dict[str, Any], releases: dict[str, dict[str, Any]] | None) -> str:
    """The card's "Targets" section: this release's targets (:mod:`zoo.targets`) against the other releases (by
    default those in the repository's ``models/``), "" where no target names it."""
    from zoo.registry import build_manifest, models_dir
    from zoo.targets import MIN_SEEDS, release_targets, targets_table

    meta = config["zoo"]
    releases = dict(build_manifest(models_dir()) if releases is None else releases)
    releases[meta["id"]] = {"architecture": config["architecture"], **meta}
    table = targets_table(release_targets(meta["id"], releases))
    if not table:
        return ""
    intro = (
        f"What this release is held to, on means over seeds (each target asks for at least {MIN_SEEDS}), "
        "from the measured numbers of the releases named (`zoo targets` lists them all):"
    )
    return f"## Targets\n\n{intro}\n\n{table}\n"


def render_card(config: dict[str, Any], releases: dict[str, dict[str, Any]] | None = None) -> str:
    """The README.md of a checkpoint folder; ``releases`` (id → manifest entry, default: the repository's
    ``models/``) are what its targets compare with."""
    from zoo.registry import HF_ORG

    meta = config["zoo"]
    comp, metrics, training = meta["compression"], meta["metrics"], meta["training"]
    text = method_text(comp["method"])
    weights = meta["files"]["model.safetensors"]
    values = {
        "front_matter": _front_matter(config, HF_ORG),
        "id": meta["id"],
        "architecture": config["architecture"],
        "hf_org": HF_ORG,
        "summary": text["Summary"],
        "differences": text["Differences from the paper"],
        "limitations": text["Limitations"],
        "citation": text["Citation"],
        "dataset": metrics["dataset"],
        "top1": f"{metrics['top1']:.2f}",
        "top5": f"{metrics['top5']:.2f}",
        "parent_row": _seed_rows(metrics) + _comparison_rows(comp, metrics),
        "num_samples": metrics["num_samples"],
        "params": f"{comp['params']:,}",
        "flops": f"{comp['flops'] / 1e6:.2f} M",
        "bops": f"{comp['bops'] / 1e6:.2f} M",
        "ops": f"{comp['ops'] / 1e6:.2f} M",
        "weight_bits": comp["weight_bits"],
        "activation_bits": comp["activation_bits"],
        "dense_parent": comp.get("dense_parent") or "none",
        "finetuned_from": comp.get("finetuned_from") or "none",
        "size": f"{weights['size']:,} bytes",
        "storage": _storage(meta),
        "sha256": weights["sha256"],
        "input_size": " x ".join(str(s) for s in config["pretrained_cfg"]["input_size"]),
        "model_args": json.dumps(config.get("model_args", {})),
        "recipe": training["recipe"],
        "command": training["command"],
        "commit": training["commit"],
        "schedule": training["schedule"],
        "num_processes": training["num_processes"],
        "history": _history_table(training["history"]),
        "speed": _speed_section(meta.get("speed")),
        "pruning": _pruning_section(meta),
        "superseded": _superseded(meta),
        "targets": _targets_section(config, releases),
    }
    template = string.Template((CARDS_DIR / "template.md").read_text())
    return template.substitute(values)


def rerender_cards(check: bool = False) -> list[str]:
    """Re-render every ``models/<id>/README.md``; return the ids whose card changed (or would, with ``check``)."""
    from zoo.registry import CARD_NAME, build_manifest, models_dir

    releases = build_manifest(models_dir())
    changed = []
    for config_path in sorted(models_dir().glob("*/config.json")):
        card = config_path.with_name(CARD_NAME)
        rendered = render_card(json.loads(config_path.read_text()), releases)
        if not card.exists() or card.read_text() != rendered:
            changed.append(config_path.parent.name)
            if not check:
                card.write_text(rendered)
    return changed
