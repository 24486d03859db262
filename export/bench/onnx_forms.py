"""``make bench-onnx``: our ONNX exports (each attention mode) against the plain ``transformers`` export.

One run: a random-init ``transformers.TimesformerForVideoClassification`` (base 8x224, 400 labels) is
saved with ``save_pretrained`` and loaded into our model through ``models.load_checkpoint`` (so both
hold the same weights); ours is exported in each attention mode, theirs the plain way
(``torch.onnx.export(hf_model, (pixel_values,), dynamo=True)``). All exports must agree with the
PyTorch reference on the same clip; then ONNX Runtime (CPU, the same thread count for all) is timed:
warm-up runs, then the timed runs interleaved model by model (so that load from other processes hits
every model alike), reporting the median and minimum wall time and the median process CPU time.

Writes ``<out-dir>/onnx.json`` and ``<out-dir>/onnx.md``.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.onnxruntime_session import cpu_session_options
from runtime.cli_args import ArgumentParser, user_errors

from export.bench.harness import (
    Rounds,
    interleaved_rounds,
    logger,
    machine,
    machine_line,
    markdown_table,
    ratio_verdict,
    spread_stats,
    write_report,
)
from export.bench.transformers_twin import export_plain_onnx, random_model
from export.onnx.attention import ATTENTION_MODES, DEFAULT_OPSET

_log = logger("onnx")

#: the reference clip's max abs logit difference every export must stay under (float32)
AGREEMENT_TOL = 1e-3


def _session(path: Path, threads: int, optimized: Path | None = None) -> Any:
    import onnxruntime as ort

    # No spinning: idle worker threads would otherwise burn CPU time that other processes (and the
    # CPU-time column) would see.
    so = cpu_session_options(threads, level="all", spinning=False)
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _op_counts(path: Path) -> collections.Counter:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return collections.Counter(
        f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in m.graph.node
    )


_ATTENTION_OPS = ("Attention", "com.microsoft.MultiHeadAttention", "com.microsoft.Attention")


def _exports(
    hf: Any, ours: Any, clip: Any, modes: tuple[str, ...], theirs_opset: int, work: Path
) -> tuple[dict[str, Path], dict[str, float]]:
    """Our export per attention mode and the plain ``transformers`` export; files and seconds per name."""
    from export.onnx.export import export_onnx

    files: dict[str, Path] = {}
    export_s: dict[str, float] = {}
    steps = 3 + len(modes)
    for i, mode in enumerate(modes):
        _log.info(f"{2 + i}/{steps} exporting ours, attention={mode} (opset {DEFAULT_OPSET[mode]})")
        t0 = time.perf_counter()
        files[f"ours-{mode}"] = export_onnx(
            ours, work / f"ours-{mode}.onnx", attention=mode, verbose=False, source=str(work / "hf")
        )
        export_s[f"ours-{mode}"] = time.perf_counter() - t0
    _log.info(
        f"{2 + len(modes)}/{steps} exporting transformers the plain way (torch.onnx.export dynamo=True, "
        f"opset {theirs_opset})"
    )
    t0 = time.perf_counter()
    files["transformers"] = export_plain_onnx(hf, work / "transformers.onnx", clip, theirs_opset)
    export_s["transformers"] = time.perf_counter() - t0
    return files, export_s


def _open_and_check(
    name: str, path: Path, threads: int, clip: np.ndarray, ref: np.ndarray, work: Path, export_s: float
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A session of ``path``, its agreement with the PyTorch reference and its graph counts (raises when it
    disagrees: the timings would compare different models)."""
    from export.onnx.export import summarize

    t0 = time.perf_counter()
    optimized = work / f"{name}.ort-optimized.onnx"
    sess = _session(path, threads, optimized)
    feed = {sess.get_inputs()[0].name: clip}
    diff = float(np.abs(sess.run(None, feed)[0] - ref).max())
    exported, fused = _op_counts(path), _op_counts(optimized)
    row = {
        "file": str(path),
        "export_s": round(export_s, 1),
        "session_s": round(time.perf_counter() - t0, 2),
        "max_abs_logit_vs_pytorch": diff,
        "nodes": sum(exported.values()),
        "reshape": exported.get("Reshape", 0),
        "transpose": exported.get("Transpose", 0),
        "attention_subgraphs": summarize(path)["attention"],
        "ort_nodes": sum(fused.values()),
        "ort_fused_attention": {k: v for k, v in fused.items() if k in _ATTENTION_OPS},
        "ort_reshape": fused.get("Reshape", 0),
        "ort_transpose": fused.get("Transpose", 0),
        "ort_softmax": fused.get("Softmax", 0),
    }
    if diff > AGREEMENT_TOL:
        raise RuntimeError(
            f"{path}: ONNX Runtime logits differ from the PyTorch reference by {diff:.3e} "
            f"(> {AGREEMENT_TOL:g}); the timings would compare different models"
        )
    optimized.unlink(missing_ok=True)
    for extra in optimized.parent.glob(optimized.name + "*.data"):
        extra.unlink()
    return sess, feed, row


def run_bench(
    threads: int = 2,
    runs: int = 10,
    warmup: int = 2,
    modes: tuple[str, ...] = ATTENTION_MODES,
    theirs_opset: int = 18,
    batch: int = 1,
    seed: int = 0,
    work_dir: Path | None = None,
    frames: int = 8,
    image_size: int = 224,
    num_labels: int = 400,
) -> dict[str, Any]:
    """Export, check agreement, time; returns the results (see the module docstring)."""
    import onnxruntime as ort
    import torch
    import transformers

    from models import load_checkpoint

    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench_onnx.") if work_dir is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else Path(work_dir)  # type: ignore[arg-type]
    work.mkdir(parents=True, exist_ok=True)
    try:
        _log.info(
            f"1/{3 + len(modes)} transformers TimeSformer (random init, {frames}x{image_size}, {num_labels} "
            "labels): save_pretrained, load_checkpoint"
        )
        hf = random_model(
            transformers.TimesformerConfig(num_frames=frames, image_size=image_size, num_labels=num_labels), seed
        )
        hf.save_pretrained(work / "hf")
        ours = load_checkpoint(work / "hf")
        clip = torch.randn(batch, frames, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed + 7))
        with torch.no_grad():
            ref = ours(clip).numpy()
            torch_diff = float(np.abs(ref - hf(pixel_values=clip).logits.numpy()).max())
        _log.info(f"  PyTorch: ours vs transformers max |dlogit| {torch_diff:.2e}")
        files, export_s = _exports(hf, ours, clip, modes, theirs_opset, work)
        del hf
        _log.info(
            f"{3 + len(modes)}/{3 + len(modes)} ONNX Runtime {ort.__version__} CPU, {threads} threads, batch "
            f"{batch}: sessions, agreement, {warmup} warm-up + {runs} timed runs each (interleaved)"
        )
        results, fns = {}, {}
        for name, path in files.items():
            sess, feed, results[name] = _open_and_check(name, path, threads, clip.numpy(), ref, work, export_s[name])
            fns[name] = lambda s=sess, f=feed: s.run(None, f)
        rounds = interleaved_rounds(fns, runs, 1, warmup, cpu_time=True)
        for name in fns:
            results[name].update(
                spread_stats(rounds.flat(name)), cpu_median_s=float(np.median(rounds.flat(name, "cpu")))
            )
        _ratios(results, rounds)
        return {
            "what": f"base {frames}x{image_size}, {num_labels} classes, float32, ONNX Runtime CPU",
            "threads": threads,
            "batch": batch,
            "runs": runs,
            "warmup": warmup,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "pytorch_ours_vs_transformers_max_abs_logit": torch_diff,
            "machine": machine(),
            "results": results,
        }
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


def _ratios(results: dict[str, dict[str, Any]], rounds: Rounds) -> None:
    """Each model against the plain export: the medians' ratio (claimed only when the rounds agree) and the min's."""
    theirs = results["transformers"]
    for name, r in results.items():
        v = ratio_verdict(
            rounds.round_medians(name), rounds.round_medians("transformers"), names=(name, "transformers")
        )
        r["ratio_vs_transformers"] = v["ratio"]
        r["ratio_reason"] = v["reason"]
        r["ratio_median_vs_transformers"] = r["median_s"] / theirs["median_s"]
        r["ratio_min_vs_transformers"] = r["min_s"] / theirs["min_s"]
        r["ratio_cpu_vs_transformers"] = r["cpu_median_s"] / theirs["cpu_median_s"]


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table."""

    def ratio(r: dict[str, Any]) -> str:
        return (
            f"{r['ratio_vs_transformers']:.2f}"
            if r["ratio_vs_transformers"] is not None
            else f"({r['ratio_median_vs_transformers']:.2f}: rounds disagree)"
        )

    lines = [
        f"ONNX Runtime {report['onnxruntime']} CPU, {report['what']}, batch {report['batch']}, "
        f"{report['threads']} threads, {report['runs']} interleaved runs after {report['warmup']} warm-up",
        "",
        machine_line(report["machine"]),
        "",
    ]
    lines += markdown_table(
        [
            "model",
            "median s",
            "min s",
            "spread (p10-p90)/median",
            "CPU s (median)",
            "ours/theirs (median)",
            "ours/theirs (min)",
            "max abs dlogit",
            "Reshape",
            "Transpose",
            "nodes",
            "attention subgraphs",
            "fused by ORT",
        ],
        [
            [
                name,
                f"{r['median_s']:.3f}",
                f"{r['min_s']:.3f}",
                f"{r['spread']:.0%}",
                f"{r['cpu_median_s']:.3f}",
                ratio(r),
                f"{r['ratio_min_vs_transformers']:.2f}",
                f"{r['max_abs_logit_vs_pytorch']:.1e}",
                r["reshape"],
                r["transpose"],
                r["nodes"],
                ", ".join(f"{v} {k}" for k, v in r["attention_subgraphs"].items()) or "-",
                ", ".join(f"{v} {k}" for k, v in r["ort_fused_attention"].items()) or "none",
            ]
            for name, r in report["results"].items()
        ],
    )
    return "\n".join(lines) + "\n"


@user_errors("make bench-onnx")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bench.onnx_forms", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default=",".join(ATTENTION_MODES), help="comma-separated attention modes")
    ap.add_argument("--theirs-opset", type=int, default=18)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", "--out-dir", dest="out_dir", default="artifacts/bench")
    ap.add_argument("--work-dir", default=None, help="keep the exported models here (default: a temporary directory)")
    a = ap.parse_args(argv)
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in ATTENTION_MODES]
    if bad:
        ap.error(f"--modes: unknown {bad}; expected some of {ATTENTION_MODES}")
    report = run_bench(
        threads=a.threads,
        runs=a.runs,
        warmup=a.warmup,
        modes=modes,
        theirs_opset=a.theirs_opset,
        batch=a.batch,
        seed=a.seed,
        work_dir=Path(a.work_dir) if a.work_dir else None,
    )
    md = markdown(report)
    paths = write_report(a.out_dir, "onnx", report, md)
    print(md)
    _log.info("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
