"""The ``zoo`` command: list, inspect, evaluate, benchmark and publish the zoo's checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zoo.allocator import retain_freed_memory
from zoo.errors import ZooError


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _list_rows() -> list[dict[str, Any]]:
    from zoo.cards import seed_spread
    from zoo.registry import load_manifest

    manifest = load_manifest()
    rows = []
    for cid, e in sorted(manifest.items()):
        comp = e["compression"]
        rows.append({
            "id": cid,
            "method": comp["method"],
            "bits (W/A)": f"{comp['weight_bits']}/{comp['activation_bits']}",
            "params": f"{comp['params'] / 1e6:.3f}M",
            "FLOPs": f"{comp['flops'] / 1e6:.2f}M",
            "BOPs": f"{comp['bops'] / 1e6:.2f}M",
            "size": f"{e['file_size'] / 1e6:.2f}MB",
            "top-1": f"{e['metrics']['top1']:.2f}",
            "seeds: mean ± std": seed_spread(e["metrics"].get("seeds")) or "-",
            "dataset": e["metrics"]["dataset"],
            "vs dense parent": _versus_parent(e, manifest.get(comp.get("dense_parent") or "") or _reference_entry(e)),
        })  # fmt: skip
    return rows


def _reference_entry(entry: dict[str, Any]) -> dict[str, Any] | None:
    """An unreleased dense parent (recorded in the checkpoint's config) in the shape of a manifest entry."""
    reference = entry["compression"].get("dense_reference")
    if reference is None:
        return None
    return {"id": f"{reference['id']} (not released)", "compression": reference, "metrics": reference}


def _versus_parent(entry: dict[str, Any], parent: dict[str, Any] | None) -> str:
    """E.g. ``resnet56.fmnist: FLOPs -50%, params -49%, top-1 -0.31``; empty for models without a parent."""
    if parent is None:
        return ""
    comp, base = entry["compression"], parent["compression"]
    flops = (comp["flops"] + comp["bops"] / 64) / (base["flops"] + base["bops"] / 64) - 1
    params = comp["params"] / base["params"] - 1
    top1 = entry["metrics"]["top1"] - parent["metrics"]["top1"]
    return f"{parent['id']}: OPs {flops:+.0%}, params {params:+.0%}, top-1 {top1:+.2f}"


def cmd_list(args: argparse.Namespace) -> None:
    from zoo.registry import load_manifest

    if args.json:
        print(json.dumps(load_manifest(), indent=2))
    else:
        rows = _list_rows()
        print(_table(rows, list(rows[0]) if rows else ["id"]))


def cmd_info(args: argparse.Namespace) -> None:
    from zoo.registry import manifest_entry

    entry = manifest_entry(args.id)
    if args.json:
        print(json.dumps(entry, indent=2))
        return
    comp, metrics = entry["compression"], entry["metrics"]
    print(f"{entry['id']}  ({entry['architecture']}, method {comp['method']})")
    print(f"  hub repo     {entry['hf_hub_id']} @ {entry.get('hf_hub_revision') or 'main (not yet pinned)'}")
    print(f"  sha256       {entry['sha256']}  ({entry['file_size']:,} bytes)")
    print(f"  input        {entry['pretrained_cfg']['input_size']}, {entry['pretrained_cfg']['num_classes']} classes")
    print(f"  params       {comp['params']:,}   FLOPs {comp['flops']:,}   BOPs {comp['bops']:,}   OPs {comp['ops']:,}")
    print(f"  bits (W/A)   {comp['weight_bits']}/{comp['activation_bits']}   dense parent: {comp['dense_parent']}")
    print(f"  top-1/top-5  {metrics['top1']:.2f} / {metrics['top5']:.2f} on {metrics['dataset']} {metrics['split']}")
    print(f"  model_args   {json.dumps(entry['model_args'])}")


def cmd_eval(args: argparse.Namespace) -> None:
    from zoo.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.id, args.dataset, args.limit, progress=not args.json, packed=args.packed)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['id']} on {result['dataset']} test ({result['num_samples']} images): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%")  # fmt: skip


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from zoo.leaderboard import build_leaderboard

    rows = build_leaderboard(cached=args.cached, limit=args.limit, write=not args.no_write, out_dir=args.out_dir)
    columns = ["id", "method", "top1", "top5", "params", "flops", "bops", "size_bytes", "latency_b1_ms"]
    print(_table(rows, [*columns, "recorded_top1"]))


def cmd_bench(args: argparse.Namespace) -> None:
    if args.record and args.target in ("data", "kernels"):
        sys.exit(f"--record stores a checkpoint's speed in its card; `zoo bench {args.target}` has none to store")
    if args.target == "data":
        cmd_bench_data(args)
    elif args.target == "kernels":
        cmd_bench_kernels(args)
    else:
        cmd_bench_checkpoint(args)


def cmd_bench_checkpoint(args: argparse.Namespace) -> None:
    from zoo.bench import bench_checkpoint

    result = bench_checkpoint(args.target, tuple(args.batch or (1, 64)), args.repeats, args.threads)
    if args.record:
        from zoo.bench import record_checkpoint_speed

        record_checkpoint_speed(result)
        print(
            f"recorded in models/{args.target}/config.json and its card; run `zoo leaderboard --cached` next",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['cpu']}, {result['threads']} threads, torch {result['torch']}")
    rows = [{"model": name, "batch": r["batch"], "ms": f"{r['ms']:.3f}", "images/s": f"{r['images_per_s']:,.0f}"}
            for name, runs in result["results"].items() for r in runs]  # fmt: skip
    print(_table(rows, list(rows[0])))
    for name, how in result.get("notes", {}).items():
        print(f"{name}: {how}")
    print(f"peak RSS of this process: {result['peak_rss_mb']:.0f} MB")
    if "cuda" in result:
        gpu = result["cuda"]
        rows = [{"model": name, "batch": r["batch"], "ms": f"{r['ms']:.3f}", "images/s": f"{r['images_per_s']:,.0f}"}
                for name, runs in gpu["results"].items() for r in runs]  # fmt: skip
        print(f"\n{gpu['device']} (peak allocated {gpu['peak_memory_mb']:.0f} MB)")
        print(_table(rows, list(rows[0])))


def cmd_bench_data(args: argparse.Namespace) -> None:
    from zoo.bench import bench_data_pipeline

    result = bench_data_pipeline(args.dataset, (args.batch or [128])[0], args.batches)
    print(json.dumps(result) if args.json else
          f"{result['dataset']} training pipeline: {result['images_per_s']:,.0f} augmented images/s "
          f"(batch {result['batch_size']}, {result['threads']} threads)")  # fmt: skip


def _kernel_rows(rows: list[dict]) -> list[dict]:
    return [
        {"what": r["name"], "batch": r["batch"], "ms": f"{r['ms']:.3f}", "baseline": r["baseline"],
         "baseline ms": f"{r['baseline_ms']:.3f}", "speedup": f"{r['speedup']:.1f}x",
         "first-call speedup": f"{r['first_call_speedup']:.1f}x" if "first_call_speedup" in r else ""}
        if "skipped" not in r else
        {"what": r["name"], "batch": r["batch"], "ms": "", "baseline": r["baseline"], "baseline ms": "skipped",
         "speedup": "", "first-call speedup": ""}
        for r in rows
    ]  # fmt: skip


def cmd_bench_kernels(args: argparse.Namespace) -> None:
    from zoo.bench import active_isa_cap, bench_kernels, isa_cap_environment
    from zoo.bench_peers import peer_lines

    if args.isa is not None and active_isa_cap() != args.isa:  # the caps act at process start: run in a fresh one
        import subprocess

        env = isa_cap_environment(args.isa)
        sys.exit(subprocess.run([sys.executable, "-m", "zoo.cli", *args.argv], env=env).returncode)

    result = bench_kernels(args.threads, tuple(args.batch or (1, 32)), args.repeats, end_to_end=not args.layers_only,
                           lce_python=args.lce_python)  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['cpu']} ({', '.join(result['cpu_flags'])}), {result['threads']} threads, "
          f"kernel {result['kernel_backend']}, torch {result['torch']}")  # fmt: skip
    if result.get("isa_cap"):
        print(f"held to {result['isa_cap']}")
    print(_table(_kernel_rows(result["rows"]), ["what", "batch", "ms", "baseline", "baseline ms", "speedup",
                                                "first-call speedup"]))  # fmt: skip
    print(f"timing: {result['timing']}")
    scaling = result["thread_scaling"]
    print(f"thread scaling ({scaling['probe']}, {result['threads']} threads vs 1): "
          f"{scaling['start']['speedup']}x at the start, {scaling['end']['speedup']}x at the end")  # fmt: skip
    if footnotes := peer_lines(result):
        print("\n".join(footnotes))
    if "cuda" in result:
        gpu = result["cuda"]
        print(f"\n{gpu['device']} (CUDA {gpu['torch_cuda']}): {gpu.get('skipped') or gpu['timing']}")
        if "rows" in gpu:
            print(_table(_kernel_rows(gpu["rows"]), ["what", "batch", "ms", "baseline", "baseline ms", "speedup"]))
    sizes = result["checkpoint_size"]
    print(f"checkpoint size vs torchvision resnet18 fp32 ({sizes['torchvision resnet18 fp32 bytes'] / 1e6:.2f} MB):")
    for key, floats in (("packed", "float32"), ("packed_float16_head", "float16")):
        print(f"  packed, classifier in {floats}: "
              + ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB ({v['times_smaller']:.1f}x smaller)"
                          for k, v in sizes[key].items()))  # fmt: skip


def cmd_finetune(args: argparse.Namespace) -> None:
    from training.finetune import finetune

    config = finetune(args.id, args.dataset, args.num_classes, args.new_id, args.epochs, args.lr, args.batch_size,
                      args.freeze_backbone, compare_scratch=not args.no_scratch)  # fmt: skip
    metrics = config["zoo"]["metrics"]
    scratch = f" (from scratch, same budget: {metrics['scratch_top1']:.2f}%)" if "scratch_top1" in metrics else ""
    print(f"models/{config['zoo']['id']}: top-1 {metrics['top1']:.2f}% on {metrics['dataset']} test{scratch}")


def cmd_push(args: argparse.Namespace) -> None:
    from zoo.publish import push_checkpoint

    commit = push_checkpoint(args.id, args.repo, token=args.token, private=args.private, record=args.record)
    print(f"pushed {args.id} to {args.repo} at commit {commit}")


def cmd_manifest(args: argparse.Namespace) -> None:
    from zoo.registry import write_manifest

    print(f"manifest: {len(write_manifest())} released checkpoints")


def cmd_cards(args: argparse.Namespace) -> None:
    from zoo.cards import rerender_cards

    changed = rerender_cards(check=args.check)
    if args.check and changed:
        sys.exit(f"model cards out of date: {changed}. Run `zoo cards` and commit the result.")
    print(f"cards: {len(changed)} changed")


def cmd_targets(args: argparse.Namespace) -> None:
    import dataclasses

    from zoo.registry import load_manifest
    from zoo.targets import all_targets, targets_table

    checks = all_targets(load_manifest())
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        print(targets_table(checks, with_ids=True) or "no released checkpoint is named by a target", end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="released checkpoints as a table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="everything recorded about one checkpoint")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="top-1/top-5 on the full test split")
    p.add_argument("id", help="registry id, hf-hub:<org>/<name>[@rev] or local-dir:<folder>")
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--limit", type=int, help="evaluate the first N test images only")
    p.add_argument("--packed", action="store_true", help="BNNs: run the packed 1-bit kernels (zoo.to_inference)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("leaderboard", help="evaluate every released checkpoint and write cards/leaderboard.*")
    p.add_argument("--cached", action="store_true", help="reuse results cached by sha256")
    p.add_argument("--limit", type=int, help="evaluate the first N test images only (then nothing is written)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--out-dir", type=Path, help="where the tables and plots go (default: cards/)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("bench", help="benchmarks: 'data', 'kernels' or a checkpoint id")
    p.add_argument("target", help="data (input pipeline), kernels (binary conv kernels) or a checkpoint id")
    p.add_argument("--threads", type=int, help="default: torch's default")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (kernels: 1 32; checkpoint: 1 64; data: 128)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batches", type=int, default=200, help="data: batches to time")
    p.add_argument("--dataset", default="fashion_mnist", help="data: which dataset")
    p.add_argument("--layers-only", action="store_true", help="kernels: skip the end-to-end ResNet-18 rows")
    p.add_argument("--lce-python", help="kernels: the Python that has larq-compute-engine (default: "
                   "$ZOO_BENCH_LCE_PYTHON, else this one)")  # fmt: skip
    p.add_argument("--isa", choices=["avx2"], help="kernels: hold the zoo's kernels, oneDNN, ATen and FBGEMM to "
                   "AVX2 (the stand-in for an AVX2-only CPU on one that has AVX-512)")  # fmt: skip
    p.add_argument("--record", action="store_true", help="checkpoint: write the result into models/<id> (card, config)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on another dataset (new head), vs from scratch")
    p.add_argument("id", help="the released checkpoint to start from")
    p.add_argument("--dataset", required=True, help="a zoo dataset name, e.g. mnist_5k")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--new-id", help="default: <architecture>.<dataset>")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--freeze-backbone", action="store_true", help="train the new head only")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline run")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("push", help="publish models/<id> to a Hugging Face Hub repo")
    p.add_argument("id")
    p.add_argument("--repo", required=True, help="<org>/<name>")
    p.add_argument("--token", help="default: the token huggingface_hub finds (HF_TOKEN or `hf auth login`)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--record", action="store_true", help="pin the pushed commit in the registry")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("manifest", help="regenerate the package manifest from models/")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("cards", help="re-render models/*/README.md from config.json and cards/")
    p.add_argument("--check", action="store_true", help="fail if a committed card differs from its rendering")
    p.set_defaults(func=cmd_cards)

    p = sub.add_parser("targets", help="the released checkpoints' targets (zoo.targets), met or missed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_targets)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    retain_freed_memory()
    try:
        args.func(args)
    except ZooError as err:
        sys.exit(f"zoo: error: {err}")


if __name__ == "__main__":
    main()
