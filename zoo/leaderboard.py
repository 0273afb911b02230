"""The leaderboard: every released checkpoint evaluated and measured by code, written to ``cards/``.

``build_leaderboard`` evaluates each released checkpoint (or reuses its CSV row when the weights' sha256 is
unchanged, with ``cached``) and writes, into ``out_dir``:

- ``leaderboard.csv``: one row per checkpoint, the columns of :data:`COLUMNS`;
- ``LEADERBOARD.md``: the measured table, the plots, and a separate table of the papers' *reported* results
  (:mod:`zoo.reported`), which are never mixed with the measured ones;
- ``accuracy_vs_ops.png`` and ``accuracy_vs_latency.png``: measured top-1 against OPs and against batch-1 latency,
  one panel per dataset, with the Pareto front of each panel.

Latency is not re-measured here: it is the ``zoo.speed`` block recorded in the checkpoint's config.json by export
or, later, by ``zoo bench <id> --record`` (its first entry, the checkpoint's own deployed form), with that block's
device and threads.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from zoo.cards import CARDS_DIR
from zoo.errors import MissingExtraError
from zoo.registry import load_manifest

CSV_NAME = "leaderboard.csv"
MD_NAME = "LEADERBOARD.md"
OPS_PLOT = "accuracy_vs_ops.png"
LATENCY_PLOT = "accuracy_vs_latency.png"
CSV_PATH = CARDS_DIR / CSV_NAME
COLUMNS = ["id", "method", "family", "data", "top1", "top5", "params", "flops", "bops", "ops", "size_bytes",
           "weight_bits", "activation_bits", "latency_b1_ms", "latency_b64_ms", "latency_device", "latency_threads",
           "dense_parent", "recipe", "sha256", "recorded_top1", "seeds", "seeds_top1_mean",
           "seeds_top1_std"]  # fmt: skip
LATENCY_COLUMNS = ("latency_b1_ms", "latency_b64_ms", "latency_device", "latency_threads")
PLOT_DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


# ---------------------------------------------------------------------------------------------------- rows


def checkpoint_config(checkpoint_id: str) -> dict[str, Any]:
    """The released checkpoint's config.json (local hub, HF cache or Hub, as loading resolves it)."""
    from zoo.hub import resolve_registry

    return resolve_registry(checkpoint_id).config


def speed_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 / batch-64 latency of the first form in ``zoo.speed.results``, with its device and threads.

    Every field is "" when the config has no speed block (or that batch was not measured).
    """
    speed = (config.get("zoo") or {}).get("speed") or {}
    results = speed.get("results") or {}
    if not results:
        return dict.fromkeys(LATENCY_COLUMNS, "")
    own = next(iter(results.values()))  # the checkpoint's own form: packed kernels for a BNN, fp32 for dense
    ms = {r["batch"]: r["ms"] for r in own}
    device = speed.get("device", "")
    if speed.get("cpu"):
        device = f"{device} ({speed['cpu']})"
    return {"latency_b1_ms": ms.get(1, ""), "latency_b64_ms": ms.get(64, ""), "latency_device": device,
            "latency_threads": speed.get("threads", "")}  # fmt: skip


def checkpoint_fields(checkpoint_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every column that is read from the registry and config.json rather than measured here."""
    entry = load_manifest()[checkpoint_id]
    if config is None:
        config = checkpoint_config(checkpoint_id)
    comp = entry["compression"]
    training = (config.get("zoo") or {}).get("training") or {}
    return {
        "id": checkpoint_id,
        "method": comp["method"],
        "family": entry["architecture"],
        "size_bytes": entry["file_size"],
        "weight_bits": comp["weight_bits"],
        "activation_bits": comp["activation_bits"],
        **speed_fields(config),
        "dense_parent": comp["dense_parent"] or "",
        "recipe": training.get("recipe") or f"training/recipes/{checkpoint_id}.yaml",
        "sha256": entry["sha256"],
        "recorded_top1": round(entry["metrics"]["top1"], 2),
        **seed_fields(entry["metrics"].get("seeds")),
    }


def seed_fields(seeds: dict[str, Any] | None) -> dict[str, Any]:
    """How many seeds the release trained and the mean ± std of their test top-1 (recorded at export)."""
    if not seeds or seeds["n"] < 2:
        return {"seeds": 1, "seeds_top1_mean": "", "seeds_top1_std": ""}
    return {"seeds": seeds["n"], "seeds_top1_mean": seeds["top1_mean"], "seeds_top1_std": seeds["top1_std"]}


def measure_checkpoint(checkpoint_id: str, limit: int | None = None) -> dict[str, Any]:
    """Evaluate and re-measure one released checkpoint (accuracy, params, FLOPs/BOPs), in :data:`COLUMNS` order."""
    from zoo.api import from_pretrained
    from zoo.evaluate import evaluate_checkpoint
    from zoo.measure import model_summary

    entry = load_manifest()[checkpoint_id]
    result = evaluate_checkpoint(checkpoint_id, None, limit, progress=True)
    summary = model_summary(from_pretrained(checkpoint_id), tuple(entry["pretrained_cfg"]["input_size"]))
    measured = {"data": result["dataset"], "top1": round(result["top1"], 2), "top5": round(result["top5"], 2),
                **summary}  # fmt: skip
    row = {**checkpoint_fields(checkpoint_id), **measured}
    return {c: row[c] for c in COLUMNS}


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _from_cache(row: dict[str, str]) -> dict[str, Any]:
    """A cached CSV row in :data:`COLUMNS` order: its measured columns reused, the rest read afresh.

    The columns read from config.json and the registry (e.g. a speed block re-recorded by ``zoo bench --record``)
    are never taken from the cache, so they cannot go stale; only what evaluating the weights measured is reused.
    """
    row = {**row, **checkpoint_fields(row["id"])}
    return {c: row[c] for c in COLUMNS}


# ---------------------------------------------------------------------------------------------------- Pareto


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None for "", None and NaN."""
    if value is None or value == "":
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def pareto_front(points: Sequence[tuple[Any, Any]]) -> list[int]:
    """Indices of the (cost, accuracy) points on the Pareto front, in increasing cost.

    A point is on the front when no other point has at most its cost and at least its accuracy, one of them
    strictly: the front gives the best accuracy reachable for at most each cost. Of identical points only the first
    is kept. Points with a missing (None, "") or non-finite coordinate are ignored.
    """
    valid = []
    for i, (cost, acc) in enumerate(points):
        c, a = _number(cost), _number(acc)
        if c is not None and a is not None:
            valid.append((c, -a, i))
    front, best = [], -math.inf
    for _, neg_a, i in sorted(valid):
        if -neg_a > best:
            front.append(i)
            best = -neg_a
    return front


def _front_ids(rows: Sequence[dict[str, Any]], x_key: str) -> set[str]:
    """Ids on the Pareto front of top-1 vs ``x_key``, computed per dataset."""
    ids: set[str] = set()
    for data in sorted({str(r["data"]) for r in rows}):
        group = [r for r in rows if str(r["data"]) == data]
        ids.update(group[i]["id"] for i in pareto_front([(r[x_key], r["top1"]) for r in group]))
    return ids


# ---------------------------------------------------------------------------------------------------- plots


def _plotting() -> tuple[ModuleType, type, type]:
    """(matplotlib, its Agg canvas, its Figure), or MissingExtraError naming the ``plots`` extra."""
    try:
        import matplotlib
        import matplotlib.style
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as err:
        raise MissingExtraError("matplotlib", "plots", "drawing the leaderboard plots") from err
    return matplotlib, FigureCanvasAgg, Figure


def plot_accuracy(rows: Sequence[dict[str, Any]], x_key: str, xlabel: str, title: str, path: Path) -> None:
    """Measured top-1 vs ``x_key`` (log x), one panel per dataset, one marker per method, the Pareto front as a step
    line with its points ringed. Rows without a value for ``x_key`` are left out and counted in the panel title.

    Written with the Agg canvas and no 'Software' metadata, so the same rows give the same bytes.
    """
    matplotlib, FigureCanvasAgg, Figure = _plotting()
    datasets = sorted({str(r["data"]) for r in rows}) or ["(no checkpoints)"]
    methods = sorted({str(r["method"]) for r in rows})
    marker = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}
    with matplotlib.style.context("default"), matplotlib.rc_context({"font.size": 9}):
        fig = Figure(figsize=(6.4 * len(datasets), 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        for k, data in enumerate(datasets):
            ax = fig.add_subplot(1, len(datasets), k + 1)
            group = [r for r in rows if str(r["data"]) == data]
            points = [(_number(r[x_key]), _number(r["top1"])) for r in group]
            shown = [
                (r, x, y) for r, (x, y) in zip(group, points, strict=True) if x is not None and x > 0 and y is not None
            ]
            for method in methods:
                mine = [(x, y) for r, x, y in shown if str(r["method"]) == method]
                if mine:
                    ax.scatter(*zip(*mine, strict=True), marker=marker[method], s=42, label=method, zorder=3)
            for r, x, y in shown:
                ax.annotate(str(r["id"]), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7)
            front = [shown[i] for i in pareto_front([(x, y) for _, x, y in shown])]
            if front:
                xs = [x for _, x, _ in front] + [max(x for _, x, _ in shown)]
                ys = [y for _, _, y in front] + [front[-1][2]]
                ax.plot(xs, ys, drawstyle="steps-post", color="0.35", linestyle="--", linewidth=1.2, zorder=2,
                        label="Pareto front")  # fmt: skip
                ax.scatter(xs[:-1], ys[:-1], s=150, facecolors="none", edgecolors="crimson", linewidths=1.4,
                           zorder=4, label="on the front")  # fmt: skip
            if shown:
                ax.set_xscale("log")
                ax.legend(loc="best", fontsize=7)
                ax.margins(x=0.25, y=0.15)
            else:
                ax.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=ax.transAxes)
            left_out = len(group) - len(shown)
            ax.set_title(f"{title}: {data}" + (f" ({left_out} without a value not shown)" if left_out else ""))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 (%), measured")
            ax.grid(True, which="both", linewidth=0.4, alpha=0.5)
        fig.savefig(path, dpi=PLOT_DPI, metadata={"Software": None})


# ---------------------------------------------------------------------------------------------------- markdown


def _cell(value: Any, fmt: str = "{}", scale: float = 1.0) -> str:
    """``value`` formatted as a number, "-" when missing."""
    try:
        x = _number(value)
    except ValueError:
        return str(value)
    return "-" if x is None else fmt.format(x / scale)


def _seed_cell(row: dict[str, Any]) -> str:
    if _number(row["seeds_top1_std"]) is None:
        return "-"
    return f"{float(row['seeds_top1_mean']):.2f} ± {float(row['seeds_top1_std']):.2f} (n={int(float(row['seeds']))})"


def _measured_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    head = ["id", "method", "data", "top-1 (%)", "top-5 (%)", "params", "FLOPs (M)", "BOPs (M)", "OPs (M)",
            "size (KB)", "W/A bits", "latency b1 (ms)", "latency b64 (ms)", "latency on", "dense parent",
            "export top-1 (%)", "seeds: top-1 mean ± std (%)", "Pareto front"]  # fmt: skip
    on_ops, on_latency = _front_ids(rows, "ops"), _front_ids(rows, "latency_b1_ms")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        threads = _cell(r["latency_threads"], "{:.0f}")
        where = "-" if r["latency_device"] in ("", None) else f"{r['latency_device']}, {threads} thread(s)"
        fronts = ", ".join(n for n, ids in (("OPs", on_ops), ("latency", on_latency)) if r["id"] in ids) or "-"
        cells = [r["id"], r["method"], r["data"], _cell(r["top1"], "{:.2f}"), _cell(r["top5"], "{:.2f}"),
                 _cell(r["params"], "{:,.0f}"), _cell(r["flops"], "{:.2f}", 1e6), _cell(r["bops"], "{:.2f}", 1e6),
                 _cell(r["ops"], "{:.2f}", 1e6), _cell(r["size_bytes"], "{:.1f}", 1e3),
                 f"{r['weight_bits']}/{r['activation_bits']}", _cell(r["latency_b1_ms"], "{:.3f}"),
                 _cell(r["latency_b64_ms"], "{:.3f}"), where, r["dense_parent"] or "-",
                 _cell(r["recorded_top1"], "{:.2f}"), _seed_cell(r), fronts]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def reported_table(results: Sequence[Any] | None = None) -> list[str]:
    """The papers' reported results (:mod:`zoo.reported`) as markdown table lines; every row says 'reported'.

    Numbers are printed as transcribed (no padding to more decimals than the source gives).
    """
    from zoo.reported import REPORTED

    head = ["dataset", "model", "paper", "setting", "W/A bits", "top-1 (%)", "top-5 (%)", "top-1 drop (pts)",
            "params (M)", "FLOPs (M)", "params ↓ (%)", "FLOPs ↓ (%)", "zoo architecture", "source",
            "status"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in REPORTED if results is None else results:
        bits = f"{r.weight_bits}/{r.activation_bits}" if r.weight_bits is not None else "-"
        arch = f"`{r.zoo_architecture}`" if r.zoo_architecture else "-"
        setting = "; ".join(s for s in (r.setting, r.note) if s) or "-"
        numbers = (r.top1, r.top5, r.top1_drop, r.params_m, r.flops_m, r.params_reduction_pct, r.flops_reduction_pct)
        cells = [r.dataset, r.model, r.method, setting, bits, *(_cell(v) for v in numbers), arch, r.source, r.status]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


REPORTED_HEADING = "## Reported by the papers (not measured here)"


def _targets_lines() -> list[str]:
    """The released checkpoints' targets (:mod:`zoo.targets`), from the means of seeds recorded at export."""
    from zoo.targets import MIN_SEEDS, all_targets, targets_table

    table = targets_table(all_targets(load_manifest()), with_ids=True)
    if not table:
        return []
    return ["## Targets", "",
            "What each release is held to (issue 14), judged on the mean top-1 of its seeds recorded at export against",
            f"the releases it names, and only with at least {MIN_SEEDS} seeds on each side (`zoo targets`).", "",
            table]  # fmt: skip


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Leaderboard",
        "",
        "## Measured here",
        "",
        "Every number in this table was computed by code from the released checkpoint: `zoo leaderboard` measured",
        "accuracy on the full test split of the checkpoint's dataset and counted params/FLOPs/BOPs on the model;",
        "latency is the one recorded in its config.json (see below). Nothing here is typed in.",
        "",
        *_measured_table(rows),
        "",
        "Columns:",
        "",
        "- **FLOPs**: full-precision multiply-accumulates (MACs) per image; **BOPs**: binary (1-bit × 1-bit) MACs",
        "  per image; **OPs** = BOPs / 64 + FLOPs, as in Bi-Real Net. Counted with `torch.utils.flop_counter`.",
        "- **size**: bytes of `model.safetensors` as released (binary weights stored bit-packed).",
        "- **latency b1 / b64**: median milliseconds per forward pass at batch 1 and batch 64 of the checkpoint's own",
        "  form (packed 1-bit kernels for BNNs, fp32 for dense models), measured by `zoo bench <id>` at export or",
        "  later with `--record` (the card says when), and recorded in its config.json (`zoo.speed`); **latency on**",
        "  is that measurement's device and thread count.",
        "  `-` where the checkpoint records no speed. Latencies taken on different devices are not comparable.",
        "- **export top-1**: the top-1 recorded in config.json when the checkpoint was exported (a check on top-1).",
        "- **seeds**: for a release trained with several seeds, the mean ± sample std of their test top-1 (recorded",
        "  at export); the row's other numbers are the released seed's, the one best on held-out training images.",
        "- **Pareto front**: on the front of top-1 vs OPs / vs batch-1 latency within its dataset (no other",
        "  checkpoint is at least as accurate for at most the same cost).",
        "",
        f"![top-1 vs OPs]({OPS_PLOT})",
        "",
        f"Top-1 against batch-1 latency: [{LATENCY_PLOT}]({LATENCY_PLOT}). Both plots show measured rows only,",
        "one panel per dataset; the dashed step line is the Pareto front (the best top-1 for at most that cost).",
        "",
        *_targets_lines(),
        REPORTED_HEADING,
        "",
        "What the papers report, transcribed from their public material (`zoo/reported.py`: the IR²Net and SD-BNN",
        "README tables, the table images in the ACP repo, the AIP and UCP abstracts). These numbers were",
        "**not** measured by the zoo and are not comparable with the table above: the papers train on CIFAR and",
        "ImageNet with their own schedules. `zoo architecture` names the zoo model that implements the configuration",
        "(for ACP's pruned rows, the unpruned family: the pruned widths are set per run by the search). FLOPs are",
        "the papers' own counts; ↓ = reduction from the paper's baseline; top-1 drop = baseline − compressed.",
        "",
        *reported_table(),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- build


README_PATH = CARDS_DIR.parent / "README.md"
README_START, README_END = "<!-- leaderboard:start (written by `zoo leaderboard`) -->", "<!-- leaderboard:end -->"


def readme_block(rows: Sequence[dict[str, Any]]) -> str:
    """The README's leaderboard: a compact measured table and the top-1 vs OPs plot."""
    head = ["id", "method", "top-1 (%)", "params", "FLOPs (M)", "BOPs (M)", "size (KB)", "W/A bits", "b1 latency (ms)"]
    lines = [README_START, "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [f"`{r['id']}`", r["method"], _cell(r["top1"], "{:.2f}"), _cell(r["params"], "{:,.0f}"),
                 _cell(r["flops"], "{:.2f}", 1e6), _cell(r["bops"], "{:.2f}", 1e6),
                 _cell(r["size_bytes"], "{:.1f}", 1e3),
                 f"{r['weight_bits']}/{r['activation_bits']}", _cell(r["latency_b1_ms"], "{:.3f}")]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"![top-1 vs OPs](cards/{OPS_PLOT})", "", README_END]
    return "\n".join(lines)


def update_readme(rows: Sequence[dict[str, Any]], readme: Path = README_PATH) -> None:
    """Replace the README's leaderboard block (between its markers) with the current rows."""
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_block(rows) + text[end:])


def write_leaderboard(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the CSV, the markdown and both plots into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / CSV_NAME)
    (out_dir / MD_NAME).write_text(markdown(rows))
    plot_accuracy(rows, "ops", "OPs per image (BOPs/64 + FLOPs), log scale", "top-1 vs OPs", out_dir / OPS_PLOT)
    plot_accuracy(rows, "latency_b1_ms", "batch-1 latency (ms), log scale", "top-1 vs latency",
                  out_dir / LATENCY_PLOT)  # fmt: skip
    return [out_dir / n for n in (CSV_NAME, MD_NAME, OPS_PLOT, LATENCY_PLOT)]


def build_leaderboard(
    cached: bool = False, limit: int | None = None, write: bool = True, out_dir: Path | str | None = None
) -> list[dict[str, Any]]:
    """Rows for every released checkpoint, written to ``out_dir`` (default ``cards/``).

    ``cached`` reuses a row of ``out_dir/leaderboard.csv`` whose id and sha256 match the released weights. Nothing
    is written with ``limit`` (a partial test split) or ``write=False``.
    """
    out_dir = Path(out_dir) if out_dir is not None else CARDS_DIR
    if write and limit is None:
        _plotting()  # a missing extra is reported before minutes of evaluation, not after
    cache = {r["sha256"]: r for r in read_csv(out_dir / CSV_NAME)} if cached else {}
    rows = []
    for checkpoint_id, entry in sorted(load_manifest().items()):
        row = cache.get(entry["sha256"])
        ok = row is not None and row["id"] == checkpoint_id
        rows.append(_from_cache(row) if ok else measure_checkpoint(checkpoint_id, limit))
    if write and limit is None:
        write_leaderboard(rows, out_dir)
        if out_dir.resolve() == CARDS_DIR.resolve():
            update_readme(rows)
    return rows
