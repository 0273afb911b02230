"""The peers of `zoo bench kernels` (int8, ONNX Runtime, Larq Compute Engine), on small inputs: their rows sit beside
the packed BNNs' with the same fields, and a peer that cannot run is a skipped row that says why."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from contextlib import redirect_stdout
from io import StringIO

import pytest
import torch
import torchvision

import zoo.bench
from zoo.bench_peers import INT8, LCE, LCE_PYTHON_ENV, ORT, Peer, bind_peers, build_peers, lce_peer, peer_lines
from zoo.cli import main

OURS = ("resnet18_sdbnn packed, BN folded", "resnet18_bireal packed, BN folded")
NO_PYTHON = "/nonexistent/bin/python"


@pytest.fixture(scope="module")
def small_run() -> dict:
    """`zoo bench kernels --json` at batch 1 on 64×64 inputs, end-to-end rows only, LCE's Python missing."""
    patch = pytest.MonkeyPatch()
    patch.setattr(zoo.bench, "_layer_rows", lambda *a, **k: [])
    patch.setattr(zoo.bench, "_end_to_end_rows", functools.partial(zoo.bench._end_to_end_rows, size=64))
    threads = torch.get_num_threads()
    try:
        out = StringIO()
        with redirect_stdout(out):
            main(["bench", "kernels", "--batch", "1", "--repeats", "3", "--threads", "1", "--json",
                  "--lce-python", NO_PYTHON])  # fmt: skip
    finally:
        patch.undo()
        torch.set_num_threads(threads)
    return json.loads(out.getvalue())


def test_peer_rows_sit_beside_both_packed_bnns(small_run):
    rows = [r for r in small_run["rows"] if r["group"] == "end-to-end 64x64"]
    for ours in OURS:
        by_baseline = {r["baseline"]: r for r in rows if r["name"] == ours}
        assert {INT8, ORT, LCE, "torchvision resnet18 fp32 (NCHW)"} <= set(by_baseline)
        for label in (INT8, ORT):
            row = by_baseline[label]
            assert row["batch"] == 1 and "skipped" not in row
            assert row["ms"] > 0 and row["baseline_ms"] > 0 and row["first_call_ms"] > 0
            # speedups are rounded to 2 decimals: up to 0.005 off, more than 1% of a ratio under 0.5
            assert row["speedup"] == pytest.approx(row["baseline_ms"] / row["ms"], rel=0.01, abs=0.006)
            assert row["first_call_speedup"] == pytest.approx(row["baseline_first_call_ms"] / row["first_call_ms"],
                                                              rel=0.01, abs=0.006)  # fmt: skip
    # every candidate was timed in the same turns: one row per (ours, baseline) shares ours' time
    assert len({r["ms"] for r in rows if r["name"] == OURS[0] and "ms" in r}) == 1
    peers = small_run["peers"]
    assert "20 real ImageNet images" in peers[INT8]["calibration"] and peers[INT8]["engine"] in ("x86", "fbgemm")
    assert peers[ORT]["intra_op_num_threads"] == 1 and peers[ORT]["max_abs_diff_vs_torch"] < 1e-3


def test_a_peer_that_cannot_run_is_a_skipped_row_with_the_real_reason(small_run, capsys, monkeypatch):
    lce_rows = [r for r in small_run["rows"] if r["baseline"] == LCE]
    assert {r["name"] for r in lce_rows} == set(OURS)
    for row in lce_rows:
        assert "ms" not in row and "speedup" not in row
        reason = row["skipped"]
        assert "FileNotFoundError" in reason and NO_PYTHON in reason and "--lce-python" in reason
    assert small_run["peers"][LCE] == {"skipped": lce_rows[0]["skipped"]}

    monkeypatch.setattr(zoo.bench, "bench_kernels", lambda *a, **k: small_run)
    capsys.readouterr()
    main(["bench", "kernels"])
    out = capsys.readouterr().out
    table_line = next(line for line in out.splitlines() if LCE in line and line.startswith(OURS[1][:20]))
    assert "skipped" in table_line
    assert f"  {LCE}: skipped: FileNotFoundError" in out and "calibrated on 20 real ImageNet images" in out


def test_missing_packages_skip_their_peer_and_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    peers = {p.label: p for p in build_peers(torchvision.models.resnet18().eval(), 1, tmp_path, sys.executable, 32)}
    assert list(peers) == [INT8, ORT, LCE]
    assert peers[INT8].skipped is None
    assert "onnxruntime" in peers[ORT].skipped and 'pip install "compressed-cnn-zoo[bench]"' in peers[ORT].skipped
    if importlib.util.find_spec("larq_compute_engine") is None:  # the usual case: LCE needs a Python of its own
        assert "No module named 'larq_compute_engine'" in peers[LCE].skipped and sys.executable in peers[LCE].skipped

    def fails_at_batch_2(x):
        if len(x) == 2:
            raise RuntimeError("no batch 2 here")
        return lambda: None

    odd = Peer("odd peer", "note", bind=fails_at_batch_2)
    calls, skipped = bind_peers([*peers.values(), odd], torch.randn(2, 3, 32, 32))
    assert set(calls) == {INT8} and skipped["odd peer"] == "RuntimeError: no batch 2 here"
    assert set(skipped) == {ORT, LCE, "odd peer"}
    assert peers[INT8].bind(torch.randn(1, 3, 32, 32))().shape == (1, 1000)  # the int8 model runs
    for peer in peers.values():
        peer.close()


def test_under_an_isa_cap_the_peers_that_cannot_be_held_to_it_are_skipped_with_why(tmp_path):
    peers = {p.label: p for p in build_peers(torchvision.models.resnet18().eval(), 1, tmp_path, NO_PYTHON, 32, "avx2")}
    assert peers[INT8].skipped is None  # FBGEMM honours FBGEMM_ENABLE_INSTRUCTIONS
    for label in (ORT, LCE):
        assert "cannot be held to avx2" in peers[label].skipped and "without --isa" in peers[label].skipped
    for peer in peers.values():
        peer.close()


def test_footnotes_name_a_peer_skipped_at_one_batch_only():
    skipped_row = {"name": OURS[0], "batch": 32, "baseline": "odd peer", "skipped": "RuntimeError: too big"}
    lines = peer_lines({"peers": {"odd peer": {"note": "what it is"}}, "rows": [skipped_row]})
    assert lines == ["peers:", "  odd peer: what it is", "  odd peer at batch 32: skipped: RuntimeError: too big"]


@pytest.mark.skipif(not os.environ.get(LCE_PYTHON_ENV), reason=f"${LCE_PYTHON_ENV} names no Python with LCE")
def test_lce_runs_the_bireal_resnet18_with_its_binary_convs(tmp_path):
    peer = lce_peer(1, tmp_path)
    assert peer.skipped is None, peer.skipped
    try:
        call = peer.bind(torch.randn(1, 3, 64, 64))
        call()
        loaded = peer.info["per_batch"][1]
        assert loaded["output_shape"] == [1, 1000] and loaded["finite"]
        assert loaded["ops"]["LceBconv2d"] == 16 and loaded["ops"]["CONV_2D"] == 4  # stem + 3 shortcut 1x1 convs
        assert 0 < peer.info["pipe_round_trip_ms"] < 5
    finally:
        peer.close()
