"""The benchmark harness (export/bench/harness.py) and the one block-divergence routine: their logic on synthetic
timings and arrays, never a speed assertion."""

import json

import numpy as np
import pytest

from export.bench.harness import interleaved_rounds, machine, machine_line, markdown_table, ratio_verdict, write_report


def test_interleaved_rounds_rotate_the_order_and_warm_up_first():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    r = interleaved_rounds(fns, rounds=3, iters=1, warmup=1, cpu_time=True)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then each round rotated
    assert {len(r.wall[n]) for n in "abc"} == {3} and all(len(x) == 1 for x in r.cpu["a"])
    assert len(r.flat("b")) == 3 and len(r.round_medians("c")) == 3
    two = []
    interleaved_rounds({"e": lambda: two.append("e"), "t": lambda: two.append("t")}, rounds=2, warmup=0)
    assert two == ["e", "t", "t", "e"]  # with two, who goes first alternates
    with pytest.raises(ValueError, match="rounds: expected at least 1"):
        interleaved_rounds(fns, rounds=0)


def test_ratio_verdict_names_the_side_that_disagrees():
    ok = ratio_verdict([2.0, 2.1, 2.0], [1.0, 1.0, 1.05], names=("ov-int8", "ort-fp32"))
    assert ok["reason"] is None and ok["ratio"] == pytest.approx(2.0) and ok["ratio_range"][0] <= 2.0
    bad = ratio_verdict([2.0, 4.0, 2.0], [1.0, 1.0, 1.0], names=("ov-int8", "ort-fp32"))
    assert bad["ratio"] is None and bad["reason"].startswith("no ratio claimed: ov-int8 rounds disagree")


def test_markdown_table_escapes_cells_and_shows_missing_values():
    lines = markdown_table(["a", "b|c"], [[1, None], ["x|y", "two\nlines"]])
    assert lines == ["| a | b\\|c |", "|---|---|", "| 1 | - |", "| x\\|y | two lines |"]


def test_machine_record_is_the_device_fingerprint_plus_load(tmp_path):
    from runtime.device import fingerprint

    m = machine()
    assert m["key"] == fingerprint()["key"] and m["cpu"]["logical_cores"] >= 1
    assert "cores" in m["load_average"] and m["date"].endswith("+00:00")
    assert m["cpu"]["model"] in machine_line(m)
    paths = write_report(
        tmp_path / "r", "x", {"machine": m}, "# x\n", lambda rep, path: path.write_bytes(b"\x89PNG\r\n\x1a\n")
    )
    assert [p.name for p in paths] == ["x.json", "x.md", "x.png"]
    assert json.loads(paths[0].read_text())["machine"]["key"] == m["key"]


def test_parity_and_precision_report_share_one_block_divergence_routine():
    """``make parity`` (block_errors) and the precision report (first_jump_block, the BlockErrors rows) are the same
    code, and it finds the block where the error starts, whatever the clip count."""
    from calibration.graph import blocks
    from export.bench import precision_report
    from export.bundle import parity

    assert parity.block_errors is blocks.block_errors and parity.block_output_names is blocks.block_output_names
    assert precision_report.first_jump_block is blocks.first_jump_block
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((3, 5, 4)).astype(np.float32) for _ in range(6)]
    eng = [r + 1e-7 for r in ref[:3]] + [r + 0.4 * (i + 1) for i, r in enumerate(ref[3:])]
    out = blocks.block_errors(ref, eng, "int8")
    assert out["first_jump_block"] == 3 and out["largest_step_block"] in (3, 4, 5)
    assert out["first_diverging_block"] == 3  # past int8's 0.25
    acc = blocks.BlockErrors()  # clip by clip gives the same rows as all at once
    for i in range(3):
        acc.add([r[i : i + 1] for r in ref], [e[i : i + 1] for e in eng])
    assert [r["rel_l2"] for r in acc.rows()] == pytest.approx([r["rel_l2"] for r in out["blocks"]])


def test_bench_claims_a_speedup_only_when_interleaved_rounds_agree():
    """The decision on synthetic round timings (seconds per round): steady rounds give the ratio and its range;
    rounds that disagree beyond the tolerance (a busy machine) give no claim and say why."""
    from export.bench.engine import markdown, speedup_verdict
    from export.bench.harness import machine, summarize_rounds

    steady = speedup_verdict([0.010, 0.011, 0.0105, 0.010, 0.0102], [0.050, 0.052, 0.049, 0.051, 0.050])
    assert steady["reason"] is None
    assert abs(steady["speedup"] - 0.050 / 0.0102) < 1e-9
    lo, hi = steady["speedup_range"]
    assert abs(lo - 0.049 / 0.011) < 1e-9 and abs(hi - 0.052 / 0.010) < 1e-9
    # The case: PyTorch eager at 544 ms, 22 ms, 499 ms for the same model under other load.
    noisy = speedup_verdict([0.0040, 0.0041, 0.0039], [0.544, 0.022, 0.499])
    assert noisy["speedup"] is None and noisy["speedup_range"] is None
    assert "PyTorch eager rounds disagree" in noisy["reason"] and "engine" not in noisy["reason"].split(":")[1]
    assert "engine rounds disagree" in speedup_verdict([0.004, 0.008, 0.004], [0.05, 0.05, 0.05])["reason"]
    assert "at least 3 needed" in speedup_verdict([0.004, 0.004], [0.05, 0.05])["reason"]
    # Exactly at the tolerance still counts; just past it does not.
    assert speedup_verdict([1.0, 1.0, 1.25], [2.0, 2.0, 2.0], tolerance=0.25)["speedup"] == 2.0
    assert speedup_verdict([1.0, 1.0, 1.26], [2.0, 2.0, 2.0], tolerance=0.25)["speedup"] is None
    s = summarize_rounds([0.001, 0.002, 0.003, 0.004])
    assert s["median_ms"] == 2.5 and s["min_ms"] == 1.0 and s["max_ms"] == 4.0 and s["spread"] == 3.0 / 2.5
    # The report claims nothing for the noisy batch and warns.
    rows = [
        {
            "batch": 1,
            "p50_ms": 4.0,
            "p90_ms": 4.1,
            "p99_ms": 4.2,
            "clips_per_s": 250.0,
            "rounds": noisy["engine"],
            "speedup_vs_torch_eager": None,
            "speedup_range": None,
            "speedup_reason": noisy["reason"],
        }
    ]
    result = {
        "bundle": "b",
        "precision": "fp32",
        "clip_shape": [8, 3, 64, 64],
        "engine": {"backend": "onnxruntime"},
        "machine": machine(),
        "method": {"rounds": 3, "spread_tolerance": 0.25},
        "engine_rows": rows,
        "torch_eager": [{"batch": 1, "rounds": noisy["torch_eager"]}],
        "preprocess": {},
        "stream": {"preprocess_per_sampled_frame": {"p50_ms": 0.1}, "every": 8, "window_is_view_of_ring": True},
        "peak_host_rss_mib": 1.0,
        "load_average": {"before": {"1min": 9.0, "cores": 2}, "after": {"1min": 9.5}},
    }
    md = markdown(result)
    assert "none claimed" in md and "Warning: rounds disagree" in md and "x (" not in md
    assert "Load average (1 min) before/after: 9.0 / 9.5" in md
