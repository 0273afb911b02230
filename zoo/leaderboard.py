"""The leaderboard: every released checkpoint evaluated and measured by code, written to ``cards/``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from zoo.cards import CARDS_DIR
from zoo.registry import load_manifest

CSV_PATH = CARDS_DIR / "leaderboard.csv"
MD_PATH = CARDS_DIR / "LEADERBOARD.md"
COLUMNS = ["id", "method", "family", "data", "top1", "top5", "params", "flops", "bops", "ops", "size_bytes",
           "weight_bits", "activation_bits", "dense_parent", "recipe", "sha256", "recorded_top1"]  # fmt: skip


def _cached_rows(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["sha256"]: row for row in csv.DictReader(f)}


def measure_checkpoint(checkpoint_id: str, limit: int | None = None) -> dict[str, Any]:
    """Evaluate and re-measure one released checkpoint (accuracy, params, FLOPs/BOPs, size)."""
    from zoo.api import from_pretrained
    from zoo.cli import evaluate_checkpoint
    from zoo.measure import model_summary

    entry = load_manifest()[checkpoint_id]
    result = evaluate_checkpoint(checkpoint_id, None, limit, progress=True)
    summary = model_summary(from_pretrained(checkpoint_id), tuple(entry["pretrained_cfg"]["input_size"]))
    comp = entry["compression"]
    return {
        "id": checkpoint_id,
        "method": comp["method"],
        "family": entry["architecture"],
        "data": result["dataset"],
        "top1": round(result["top1"], 2),
        "top5": round(result["top5"], 2),
        **summary,
        "size_bytes": entry["file_size"],
        "weight_bits": comp["weight_bits"],
        "activation_bits": comp["activation_bits"],
        "dense_parent": comp["dense_parent"] or "",
        "recipe": f"training/recipes/{checkpoint_id}.yaml",
        "sha256": entry["sha256"],
        "recorded_top1": round(entry["metrics"]["top1"], 2),
    }


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = ["id", "method", "top-1 (%)", "top-5 (%)", "params", "FLOPs (M)", "BOPs (M)", "OPs (M)", "size (KB)",
            "W/A bits", "dense parent"]  # fmt: skip
    lines = [
        "# Leaderboard",
        "",
        "Measured by `zoo leaderboard` on the full test split of each checkpoint's dataset. FLOPs are full-precision",
        "multiply-accumulates per image; BOPs binary ones; OPs = BOPs/64 + FLOPs. Nothing here is typed in.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for r in rows:
        lines.append(
            f"| {r['id']} | {r['method']} | {float(r['top1']):.2f} | {float(r['top5']):.2f} | {int(r['params']):,} | "
            f"{int(r['flops']) / 1e6:.2f} | {int(r['bops']) / 1e6:.2f} | {int(r['ops']) / 1e6:.2f} | "
            f"{int(r['size_bytes']) / 1e3:.1f} | {r['weight_bits']}/{r['activation_bits']} | "
            f"{r['dense_parent'] or '-'} |"
        )
    return "\n".join(lines) + "\n"


def build_leaderboard(cached: bool = False, limit: int | None = None, write: bool = True) -> list[dict[str, Any]]:
    """Rows for every released checkpoint; written to cards/ unless ``limit`` or ``write=False``."""
    cache = _cached_rows(CSV_PATH) if cached else {}
    rows = []
    for checkpoint_id, entry in sorted(load_manifest().items()):
        row = cache.get(entry["sha256"])
        rows.append(row if row is not None and row["id"] == checkpoint_id else measure_checkpoint(checkpoint_id, limit))
    if write and limit is None:
        CARDS_DIR.mkdir(exist_ok=True)
        with open(CSV_PATH, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        MD_PATH.write_text(_markdown(rows))
    return rows
