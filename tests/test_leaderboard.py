"""The leaderboard: Pareto fronts, what is written where, the CSV schema, and reported vs measured results."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

import zoo
from zoo import leaderboard as lb
from zoo.registry import load_manifest
from zoo.reported import REPORTED

EXPECTED_COLUMNS = ["id", "method", "family", "data", "top1", "top5", "params", "flops", "bops", "ops", "size_bytes",
                    "weight_bits", "activation_bits", "latency_b1_ms", "latency_b64_ms", "latency_device",
                    "latency_threads", "dense_parent", "recipe", "sha256", "recorded_top1", "seeds",
                    "seeds_top1_mean", "seeds_top1_std"]  # fmt: skip
ARTEFACTS = (lb.CSV_NAME, lb.MD_NAME, lb.OPS_PLOT, lb.LATENCY_PLOT)
LIMIT = 32  # test images per checkpoint: the rows below are a small measured sample, written to tmp dirs only


# ---------------------------------------------------------------------------------------------- pareto_front


def test_pareto_front_on_hand_made_points():
    points = [(1, 50), (2, 60), (2, 55), (3, 60), (0.5, 40), (4, 70), (1, 50), (3.5, 65)]
    # (2, 55) and (3, 60) are dominated by (2, 60); the second (1, 50) duplicates the first
    assert lb.pareto_front(points) == [4, 0, 1, 7, 5]


def test_pareto_front_edge_cases():
    assert lb.pareto_front([]) == []
    assert lb.pareto_front([(1, 50)]) == [0]
    assert lb.pareto_front([(1, 50), (1, 60)]) == [1]  # same cost: only the more accurate
    assert lb.pareto_front([(2, 50), (1, 50)]) == [1]  # same accuracy: only the cheaper
    assert lb.pareto_front([(2, 60), (1, 70)]) == [1]  # cheaper and more accurate dominates
    assert lb.pareto_front([(3, 90), (2, 80), (1, 70)]) == [2, 1, 0]  # a monotone trade-off: all on the front
    # missing or non-finite coordinates are ignored, as are CSV strings read back as such
    assert lb.pareto_front([(None, 99), ("", 99), (math.nan, 99), (1, None), ("2.5", "80"), (3, 70)]) == [4]


# ---------------------------------------------------------------------------------------------- speed block


def test_speed_fields_take_the_first_form_of_the_speed_block():
    speed = {"device": "cpu", "cpu": "Some CPU", "threads": 4, "results": {
        "x (packed 1-bit kernels)": [{"batch": 1, "ms": 0.5}, {"batch": 64, "ms": 9.0}],
        "x (fake-quant fp32)": [{"batch": 1, "ms": 5.0}, {"batch": 64, "ms": 70.0}],
    }}  # fmt: skip
    assert lb.speed_fields({"zoo": {"speed": speed}}) == {
        "latency_b1_ms": 0.5, "latency_b64_ms": 9.0, "latency_device": "cpu (Some CPU)", "latency_threads": 4,
    }  # fmt: skip
    assert lb.speed_fields({"zoo": {}}) == dict.fromkeys(lb.LATENCY_COLUMNS, "")
    only_b1 = {"device": "cuda", "threads": 1, "results": {"y (fp32)": [{"batch": 1, "ms": 2.0}]}}
    assert lb.speed_fields({"zoo": {"speed": only_b1}})["latency_b64_ms"] == ""


# ---------------------------------------------------------------------------------------------- building


def _artefact_state() -> dict[str, int | None]:
    """mtime of each leaderboard artefact in the committed cards/ folder (None: absent)."""
    return {n: (lb.CARDS_DIR / n).stat().st_mtime_ns if (lb.CARDS_DIR / n).exists() else None for n in ARTEFACTS}


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory) -> list[dict]:
    """Rows measured on the first LIMIT test images of each released checkpoint; a limited run writes nothing."""
    out = tmp_path_factory.mktemp("limited")
    before = _artefact_state()
    rows = lb.build_leaderboard(limit=LIMIT, write=True, out_dir=out)
    assert list(out.iterdir()) == []
    assert _artefact_state() == before
    return rows


@pytest.fixture(scope="module")
def board(sample_rows, tmp_path_factory) -> Path:
    """A leaderboard written into a tmp dir by the cached path, seeded with the sample rows."""
    out = tmp_path_factory.mktemp("board")
    lb.write_csv(sample_rows, out / lb.CSV_NAME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lb, "measure_checkpoint", _refuse_to_measure)
        rows = lb.build_leaderboard(cached=True, out_dir=out)
    assert [r["id"] for r in rows] == sorted(load_manifest())
    return out


def _refuse_to_measure(checkpoint_id, limit=None):
    raise AssertionError(f"{checkpoint_id} was evaluated although its sha256 is cached")


def test_limited_rows_cover_every_released_checkpoint(sample_rows):
    manifest = load_manifest()
    assert manifest and [r["id"] for r in sample_rows] == sorted(manifest)
    for row in sample_rows:
        entry = manifest[row["id"]]
        assert list(row) == EXPECTED_COLUMNS
        assert row["sha256"] == entry["sha256"] and row["size_bytes"] == entry["file_size"]
        assert (row["params"], row["flops"], row["bops"], row["ops"]) == tuple(
            entry["compression"][k] for k in ("params", "flops", "bops", "ops")
        )
        assert row["ops"] == row["flops"] + row["bops"] // 64
        assert 0 <= row["top1"] <= row["top5"] <= 100


def test_cached_build_writes_all_artefacts_into_out_dir(board):
    assert sorted(p.name for p in board.iterdir()) == sorted(ARTEFACTS)
    for name in (lb.OPS_PLOT, lb.LATENCY_PLOT):
        data = (board / name).read_bytes()
        assert data.startswith(b"\x89PNG") and b"matplotlib" not in data  # no Software/version metadata


def test_csv_columns_are_exactly_the_specified_ones(board):
    assert lb.COLUMNS == EXPECTED_COLUMNS
    with open(board / lb.CSV_NAME, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == EXPECTED_COLUMNS
        rows = list(reader)
    assert [r["id"] for r in rows] == sorted(load_manifest())
    for r in rows:  # latency comes from the checkpoint's speed block, whole or not at all
        assert (r["latency_b1_ms"] == "") == (r["latency_device"] == "")


def test_rendering_is_deterministic(board, tmp_path):
    rows = [dict(r) for r in lb.read_csv(board / lb.CSV_NAME)]
    lb.write_leaderboard(rows, tmp_path)
    for name in ARTEFACTS:
        assert (tmp_path / name).read_bytes() == (board / name).read_bytes(), name


def _table_rows(lines: list[str]) -> list[list[str]]:
    """Cells of the body rows of the first markdown table in ``lines``."""
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    body = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        body.append([c.strip() for c in line.strip().strip("|").split("|")])
    return body


def test_markdown_keeps_reported_results_apart_from_measured_ones(board):
    text = (board / lb.MD_NAME).read_text()
    measured_part, _, reported_part = text.partition(lb.REPORTED_HEADING)
    assert reported_part, "the reported table is missing"
    assert f"]({lb.OPS_PLOT})" in measured_part and f"({lb.LATENCY_PLOT})" in measured_part
    for words in ("BOPs / 64 + FLOPs", "multiply-accumulates", "thread"):
        assert words in measured_part

    measured = _table_rows(measured_part.splitlines())
    assert [r[0] for r in measured] == sorted(load_manifest())
    assert "reported" not in "\n".join("|".join(r) for r in measured)

    reported = _table_rows(reported_part.splitlines())
    assert len(reported) == len(REPORTED)
    assert reported == _table_rows(lb.reported_table())  # exactly the rows of zoo/reported.py
    assert all(r[-1] in ("reported", "reported baseline") for r in reported)
    assert lb.REPORTED_HEADING == "## Reported by the papers (not measured here)"
    assert "**not** measured by the zoo" in reported_part


def test_reported_baselines_are_marked(board):
    text = (board / lb.MD_NAME).read_text().partition(lb.REPORTED_HEADING)[2]
    baseline = [r for r in _table_rows(text.splitlines()) if r[1] == "ResNet-56" and r[0] == "CIFAR-10"]
    assert any(r[5] == "93.18" and r[-1] == "reported baseline" for r in baseline)


def test_cache_fills_columns_an_older_csv_lacks_and_remeasures_changed_weights(sample_rows, tmp_path, monkeypatch):
    old = [{k: v for k, v in r.items() if k not in lb.LATENCY_COLUMNS} for r in sample_rows]
    old[0] = {**old[0], "sha256": "0" * 64}  # weights changed since this row was cached
    with open(tmp_path / lb.CSV_NAME, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in EXPECTED_COLUMNS if c not in lb.LATENCY_COLUMNS])
        writer.writeheader()
        writer.writerows(old)
    measured = []
    monkeypatch.setattr(lb, "measure_checkpoint", lambda cid, limit=None: measured.append(cid) or dict(sample_rows[0]))
    rows = lb.build_leaderboard(cached=True, write=False, out_dir=tmp_path)
    assert measured == [sample_rows[0]["id"]]
    for row, sample in zip(rows[1:], sample_rows[1:], strict=True):
        assert list(row) == EXPECTED_COLUMNS
        assert {k: row[k] for k in lb.LATENCY_COLUMNS} == {k: sample[k] for k in lb.LATENCY_COLUMNS}


def test_cache_never_keeps_a_stale_speed_block(sample_rows, tmp_path, monkeypatch):
    stale = [{**r, "latency_b1_ms": "999.0", "latency_threads": "64"} for r in sample_rows]
    lb.write_csv(stale, tmp_path / lb.CSV_NAME)
    monkeypatch.setattr(lb, "measure_checkpoint", lambda cid, limit=None: pytest.fail(f"{cid} re-measured"))
    rows = lb.build_leaderboard(cached=True, write=False, out_dir=tmp_path)
    for row, sample in zip(rows, sample_rows, strict=True):
        assert {k: str(row[k]) for k in lb.LATENCY_COLUMNS} == {k: str(sample[k]) for k in lb.LATENCY_COLUMNS}


# ---------------------------------------------------------------------------------------------- reported data


def test_reported_rows_name_registered_architectures():
    archs = set(zoo.list_architectures())
    named = {r.zoo_architecture for r in REPORTED if r.zoo_architecture}
    assert named <= archs, named - archs
    assert {"resnet20_ir2net", "resnet18_ir2net_b", "vgg_small_sdbnn", "resnet56"} <= named


def test_reported_rows_are_well_formed():
    assert len(set(REPORTED)) == len(REPORTED)
    for r in REPORTED:
        assert r.status in ("reported", "reported baseline") and r.source
        assert r.top1 is not None or r.top1_drop is not None
        for v in (r.top1, r.top5):
            assert v is None or 0 < v <= 100
        assert (r.top5 is None) or (r.top1 is not None and r.top5 >= r.top1)
    baselines = {(r.dataset, r.model): r.top1 for r in REPORTED if r.baseline}
    assert baselines[("CIFAR-10", "ResNet-56")] == 93.18
    assert baselines[("ImageNet", "ResNet-18")] == 70.02
    # the ACP tables' reductions agree with their own baselines (transcription check)
    for r in REPORTED:
        if r.method == "ACP" and not r.baseline:
            base = next(b for b in REPORTED if b.baseline and (b.dataset, b.model) == (r.dataset, r.model))
            assert abs(100 * (1 - r.flops_m / base.flops_m) - r.flops_reduction_pct) < 0.1, r


def test_committed_readme_block_and_csv_match_the_released_checkpoints():
    from zoo.leaderboard import CSV_PATH, README_PATH, readme_block

    rows = lb.read_csv(CSV_PATH)
    manifest = load_manifest()
    assert sorted(r["id"] for r in rows) == sorted(manifest), "run `zoo leaderboard` and commit cards/ and README.md"
    for row in rows:
        entry = manifest[row["id"]]
        assert row["sha256"] == entry["sha256"] and int(row["size_bytes"]) == entry["file_size"]
        assert {k: int(row[k]) for k in ("params", "flops", "bops", "ops")} == {
            k: entry["compression"][k] for k in ("params", "flops", "bops", "ops")
        }
    assert readme_block(rows) in README_PATH.read_text()
    for row in rows:  # the latency columns are those of the speed block each config.json records now
        speed = {k: str(v) for k, v in lb.speed_fields(lb.checkpoint_config(row["id"])).items()}
        assert {k: row[k] for k in speed} == speed, f"{row['id']}: run `zoo leaderboard --cached` and commit"
