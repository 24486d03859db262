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
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.files import write_text_atomic

from runtime.cli_args import user_errors

from export.onnx.attention import ATTENTION_MODES, DEFAULT_OPSET

#: the reference clip's max abs logit difference every export must stay under (float32)
AGREEMENT_TOL = 1e-3


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _hf_model(frames: int, image_size: int, num_labels: int, seed: int) -> Any:
    import torch
    import transformers

    cfg = transformers.TimesformerConfig(num_frames=frames, image_size=image_size, num_labels=num_labels)
    torch.manual_seed(seed)
    model = transformers.TimesformerForVideoClassification(cfg).eval()
    # transformers zero-initialises the time embedding; perturb the temporal path so that it matters.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "temporal_dense" in name or "time_embeddings" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _export_theirs(hf: Any, path: Path, example: Any, opset: int) -> None:
    """The plain export of the ``transformers`` model, dynamic batch as ours."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.hf(pixel_values=pixel_values).logits

    tmp = path.with_name(path.name + ".tmp.onnx")
    with torch.no_grad():
        program = torch.onnx.export(Logits().eval(), (example,), dynamo=True, opset_version=opset,
                                    input_names=["pixel_values"], output_names=["logits"],
                                    dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}},
                                    verbose=False)
    program.save(str(tmp))
    os.replace(tmp, path)


def _session(path: Path, threads: int, optimized: Path | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spinning: idle worker threads would otherwise burn CPU time that other processes (and the
    # CPU-time column) would see.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _op_counts(path: Path) -> collections.Counter:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return collections.Counter(f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                               for n in m.graph.node)


_ATTENTION_OPS = ("Attention", "com.microsoft.MultiHeadAttention", "com.microsoft.Attention")


def run_bench(threads: int = 2, runs: int = 10, warmup: int = 2, modes: tuple[str, ...] = ATTENTION_MODES,
              theirs_opset: int = 18, batch: int = 1, seed: int = 0, work_dir: Path | None = None,
              frames: int = 8, image_size: int = 224, num_labels: int = 400) -> dict[str, Any]:
    """Export, check agreement, time; returns the results (see the module docstring)."""
    import onnxruntime as ort
    import torch
    from tqdm import tqdm

    from models import load_checkpoint

    from export.onnx.export import export_onnx, summarize

    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench_onnx.") if work_dir is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    steps = 3 + len(modes)
    try:
        _log(f"[bench-onnx] 1/{steps} transformers TimeSformer (random init, {frames}x{image_size}, {num_labels} "
             "labels): save_pretrained, load_checkpoint")
        hf = _hf_model(frames, image_size, num_labels, seed)
        hf.save_pretrained(work / "hf")
        ours = load_checkpoint(work / "hf")
        clip = torch.randn(batch, frames, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed + 7))
        with torch.no_grad():
            ref = ours(clip).numpy()
            ref_hf = hf(pixel_values=clip).logits.numpy()
        torch_diff = float(np.abs(ref - ref_hf).max())
        _log(f"[bench-onnx]   PyTorch: ours vs transformers max |dlogit| {torch_diff:.2e}")

        files: dict[str, Path] = {}
        export_s: dict[str, float] = {}
        for i, mode in enumerate(modes):
            _log(f"[bench-onnx] {2 + i}/{steps} exporting ours, attention={mode} (opset {DEFAULT_OPSET[mode]})")
            t0 = time.perf_counter()
            files[f"ours-{mode}"] = export_onnx(ours, work / f"ours-{mode}.onnx", attention=mode, verbose=False,
                                                source=str(work / "hf"))
            export_s[f"ours-{mode}"] = time.perf_counter() - t0
        _log(f"[bench-onnx] {2 + len(modes)}/{steps} exporting transformers the plain way "
             f"(torch.onnx.export dynamo=True, opset {theirs_opset})")
        t0 = time.perf_counter()
        _export_theirs(hf, work / "transformers.onnx", clip, theirs_opset)
        export_s["transformers"] = time.perf_counter() - t0
        files["transformers"] = work / "transformers.onnx"
        del hf

        _log(f"[bench-onnx] {steps}/{steps} ONNX Runtime {ort.__version__} CPU, {threads} threads, batch {batch}: "
             f"sessions, agreement, {warmup} warm-up + {runs} timed runs each (interleaved)")
        results: dict[str, dict[str, Any]] = {}
        sessions = {}
        for name, path in files.items():
            t0 = time.perf_counter()
            optimized = work / f"{name}.ort-optimized.onnx"
            sess = _session(path, threads, optimized)
            feed = {sess.get_inputs()[0].name: clip.numpy()}
            out = sess.run(None, feed)[0]
            diff = float(np.abs(out - ref).max())
            exported = _op_counts(path)
            fused = _op_counts(optimized)
            summary = summarize(path)
            results[name] = {
                "file": str(path), "export_s": round(export_s[name], 1),
                "session_s": round(time.perf_counter() - t0, 2),
                "max_abs_logit_vs_pytorch": diff,
                "nodes": sum(exported.values()),
                "reshape": exported.get("Reshape", 0), "transpose": exported.get("Transpose", 0),
                "attention_subgraphs": summary["attention"],
                "ort_nodes": sum(fused.values()),
                "ort_fused_attention": {k: v for k, v in fused.items() if k in _ATTENTION_OPS},
                "ort_reshape": fused.get("Reshape", 0), "ort_transpose": fused.get("Transpose", 0),
                "ort_softmax": fused.get("Softmax", 0),
            }
            if diff > AGREEMENT_TOL:
                raise RuntimeError(f"{path}: ONNX Runtime logits differ from the PyTorch reference by {diff:.3e} "
                                   f"(> {AGREEMENT_TOL:g}); the timings would compare different models")
            for _ in range(warmup):
                sess.run(None, feed)
            sessions[name] = (sess, feed)
            optimized.unlink(missing_ok=True)
            for extra in optimized.parent.glob(optimized.name + "*.data"):
                extra.unlink()
        wall: dict[str, list[float]] = {n: [] for n in sessions}
        cpu: dict[str, list[float]] = {n: [] for n in sessions}
        for _ in tqdm(range(runs), desc="[bench-onnx] timing rounds", file=sys.stderr):
            for name, (sess, feed) in sessions.items():
                c0, t0 = time.process_time(), time.perf_counter()
                sess.run(None, feed)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        for name in sessions:
            results[name].update(median_s=float(np.median(wall[name])), min_s=float(np.min(wall[name])),
                                 cpu_median_s=float(np.median(cpu[name])), runs_s=[round(v, 4) for v in wall[name]])
        theirs = results["transformers"]
        for name, r in results.items():
            r["ratio_vs_transformers"] = r["median_s"] / theirs["median_s"]
            r["ratio_min_vs_transformers"] = r["min_s"] / theirs["min_s"]
            r["ratio_cpu_vs_transformers"] = r["cpu_median_s"] / theirs["cpu_median_s"]
        return {
            "what": f"base {frames}x{image_size}, {num_labels} classes, float32, ONNX Runtime CPU",
            "threads": threads, "batch": batch, "runs": runs, "warmup": warmup,
            "onnxruntime": ort.__version__, "torch": torch.__version__,
            "pytorch_ours_vs_transformers_max_abs_logit": torch_diff,
            "load_average_1min_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count(),
            "results": results,
        }
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    lines = [f"ONNX Runtime {report['onnxruntime']} CPU, {report['what']}, batch {report['batch']}, "
             f"{report['threads']} threads, {report['runs']} interleaved runs after {report['warmup']} warm-up "
             f"(1-min load average at the end: {report['load_average_1min_at_end']:.1f} on {report['cpu_count']} "
             "cores)", "",
             "| model | median s | min s | CPU s (median) | ours/theirs (median) | ours/theirs (min) | max abs dlogit "
             "| Reshape | Transpose | nodes | attention subgraphs | fused by ORT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        attn = ", ".join(f"{v} {k}" for k, v in r["attention_subgraphs"].items()) or "-"
        fused = ", ".join(f"{v} {k}" for k, v in r["ort_fused_attention"].items()) or "none"
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['cpu_median_s']:.3f} | "
                     f"{r['ratio_vs_transformers']:.2f} | {r['ratio_min_vs_transformers']:.2f} | "
                     f"{r['max_abs_logit_vs_pytorch']:.1e} | {r['reshape']} | {r['transpose']} | {r['nodes']} | "
                     f"{attn} | {fused} |")
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
    ap.add_argument("--out-dir", default="artifacts/bench")
    ap.add_argument("--work-dir", default=None, help="keep the exported models here (default: a temporary directory)")
    a = ap.parse_args(argv)
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in ATTENTION_MODES]
    if bad:
        ap.error(f"--modes: unknown {bad}; expected some of {ATTENTION_MODES}")
    report = run_bench(threads=a.threads, runs=a.runs, warmup=a.warmup, modes=modes, theirs_opset=a.theirs_opset,
                       batch=a.batch, seed=a.seed, work_dir=Path(a.work_dir) if a.work_dir else None)
    out = Path(a.out_dir)
    write_text_atomic(out / "onnx.json", json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    write_text_atomic(out / "onnx.md", md)
    print(md)
    _log(f"[bench-onnx] wrote {out / 'onnx.json'} and {out / 'onnx.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
