"""``make bench-cpu [MODEL=base]``: every CPU backend and precision of ours next to the anchors, in one run.

What runs (batch 1, the same thread count everywhere):

* anchors: PyTorch eager FP32 (the accuracy reference) and bf16 autocast; the plain ``transformers`` export
  (``export.bench.onnx_forms._export_theirs``) on ONNX Runtime FP32;
* ours, as bundles built by ``make engine``'s code (``build_bundle``) and run through ``runtime.Engine``: ONNX
  Runtime FP32 and INT8 (its dynamic form); OpenVINO FP32, FP16 (run in bf16 where the CPU has it) and INT8 (the
  TensorRT Q/DQ file, q/k/v projections split as every OpenVINO bundle has them); and the TensorRT Q/DQ file in a
  plain ONNX Runtime session;
* a GEMM microbenchmark (torch: FP32, BF16, INT8 ``_int_mm``; numpy FP32; OpenVINO MatMul in f32, bf16 and int8)
  for this machine's peak, measured in the same rounds: the best of them per dtype is the peak each engine's
  achieved GFLOP/s (``models.count_flops``) is held to. It is a lower bound of the hardware's peak: an engine can
  beat a GEMM that does not reach it (a fraction of peak above 100% says so).

The model is a preset (random weights: a ``transformers`` TimeSformer built with the preset's shape and loaded into
ours, so the anchors and ours hold the same weights) or a ``transformers`` checkpoint folder. Timing: warm-up, then
interleaved rounds (every engine once per round, the order rotated each round), so load from other processes hits
all alike; median, min and the 10-90% spread per engine. Accuracy: cosine, top-1 agreement and max |dlogit| against
FP32 PyTorch on synthetic clips of a seed used neither for calibration nor for the build's parity check.

Writes ``cpu.json``, ``cpu.md`` and ``cpu.png`` under ``--out-dir`` (default ``artifacts/bench/cpu``; ``--quick``:
the motion-sized preset, a few rounds, ``artifacts/bench/cpu-quick``: seconds, used by the report-format test).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.files import write_json_atomic, write_text_atomic

from runtime.cli_args import user_errors
from calibration.precision.metrics import compare_logits, cosine_rows

from export.bundle.build import BuildError

__all__ = ["run_bench", "markdown", "plot", "TARGETS", "main"]

#: what must show (issue 18): latency ratio vs our ONNX Runtime FP32 (at most) and mean cosine (at least)
TARGETS = {"ov-int8": {"max_ratio": 0.27, "min_mean_cosine": 0.999},
           "ov-fp16": {"max_ratio": 0.5, "min_mean_cosine": 0.9999}}
#: the reference row every ratio is taken against
BASELINE = "ort-fp32"


@dataclass
class Entry:
    """One thing timed: a name, a group (anchor | ours | gemm), the dtype whose peak it is held to, a call."""

    name: str
    group: str
    dtype: str
    what: str
    run: Callable[[np.ndarray], np.ndarray]
    flops: float = 0.0  # per call (GEMMs: their own; engines: the model's per clip)
    info: dict[str, Any] | None = None


def _log(msg: str) -> None:
    print(f"[bench-cpu] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the model and its anchors

def _hf_config(c: Any) -> Any:
    """The ``transformers`` TimesformerConfig of one of our configs."""
    import transformers

    return transformers.TimesformerConfig(
        image_size=c.image_size, patch_size=c.patch_size, num_channels=c.in_chans, num_frames=c.num_frames,
        hidden_size=c.embed_dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
        intermediate_size=int(c.embed_dim * c.mlp_ratio), layer_norm_eps=c.layer_norm_eps, qkv_bias=c.qkv_bias,
        attention_type=c.attention_type, num_labels=c.num_classes)


def _hf_checkpoint(preset: str, seed: int, cache: Path) -> Path:
    """A random-init ``transformers`` TimeSformer with the preset's shape, saved once under ``cache``."""
    import torch
    import transformers

    from models import PRESETS

    out = cache / "bench_cpu" / f"hf-{preset}-seed{seed}"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = transformers.TimesformerForVideoClassification(_hf_config(PRESETS[preset].config)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # transformers zero-initialises the temporal path; make it matter (as bench_onnx does)
        for name, p in model.named_parameters():
            if "temporal_dense" in name or "time_embeddings" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def _hf_twin(net: Any, sha256: str, cache: Path) -> Path:
    """Our model's weights in a ``transformers`` model (the anchor for a checkpoint of ours), saved once."""
    import torch
    import transformers

    from models.checkpoints import hf_to_official

    out = cache / "bench_cpu" / f"hf-twin-{sha256[:16]}"
    if (out / "config.json").is_file():
        return out
    hf = transformers.TimesformerForVideoClassification(_hf_config(net.config)).eval()
    # hf_to_official renames keys; handing it the keys as values gives official name -> transformers name
    names = hf_to_official({k: k for k in hf.state_dict()}, "transformers TimeSformer")
    ours = net.state_dict()
    missing = sorted(set(names) - set(ours))
    if missing:
        raise ValueError(f"{net.config}: no transformers twin (our model lacks {missing[:3]})")
    hf.load_state_dict({hf_key: ours[official].detach().clone() for official, hf_key in names.items()}, strict=True)
    with torch.no_grad():
        x = torch.randn((1, net.config.num_frames, 3, net.config.image_size, net.config.image_size),
                        generator=torch.Generator().manual_seed(0))
        diff = float((hf(pixel_values=x).logits - net(x)).abs().max())
    if diff > 1e-3:
        raise ValueError(f"the transformers twin differs from our model by {diff:.2e} on a random clip")
    tmp = out.with_name(out.name + ".tmp")
    hf.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def _gemm_entries(n: int, threads: int) -> list[Entry]:
    """FP32/BF16/INT8 square GEMMs of size ``n`` (2n^3 FLOP or integer OP each)."""
    import torch

    rng = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(n, n, generator=rng), torch.randn(n, n, generator=rng)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    a8 = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=rng)
    b8 = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=rng)
    an, bn = a32.numpy(), b32.numpy()
    flops = 2.0 * n ** 3
    entries = [Entry("gemm-fp32-torch", "gemm", "fp32", f"torch.mm {n}x{n}x{n} float32", lambda _: torch.mm(a32, b32),
                     flops),
               Entry("gemm-fp32-numpy", "gemm", "fp32", f"numpy matmul {n}^3 float32", lambda _: an @ bn, flops),
               Entry("gemm-bf16-torch", "gemm", "bf16", f"torch.mm {n}^3 bfloat16", lambda _: torch.mm(a16, b16),
                     flops)]
    try:
        torch._int_mm(a8[:32, :32].contiguous(), b8[:32, :32].contiguous())
        entries.append(Entry("gemm-int8-torch", "gemm", "int8", f"torch._int_mm {n}^3 int8 -> int32",
                             lambda _: torch._int_mm(a8, b8), flops))
    except Exception as e:  # noqa: BLE001 - older torch builds lack the CPU kernel
        _log(f"no INT8 GEMM in this torch ({type(e).__name__}: {e})")
    entries += _openvino_gemms(n, threads)
    return entries


def _openvino_gemms(n: int, threads: int) -> list[Entry]:
    """The same GEMMs through OpenVINO's CPU plugin (oneDNN brgemm kernels: f32, bf16, and int8 from a
    FakeQuantize on the activations and dequantized int8 weights), when OpenVINO is installed."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return []
    rng = np.random.default_rng(1)
    core = ov.Core()
    x = rng.standard_normal((n, n)).astype(np.float32)
    out = []
    for dtype, hint in (("fp32", "f32"), ("bf16", "bf16"), ("int8", "f32")):
        a = ops.parameter([n, n], ov.Type.f32)
        if dtype == "int8":
            lo, hi = np.float32(-4), np.float32(4)
            act = ops.fake_quantize(a, lo, hi, lo, hi, 256)
            w = ops.multiply(ops.convert(ops.constant(rng.integers(-127, 127, (n, n), dtype=np.int8)), ov.Type.f32),
                             ops.constant(np.full((n, 1), 0.01, np.float32)))
        else:
            act, w = a, ops.constant(rng.standard_normal((n, n)).astype(np.float32))
        model = ov.Model([ops.matmul(act, w, False, True)], [a])
        try:
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_NUM_THREADS": threads})
        except RuntimeError as e:  # bf16 on a CPU without it, for example
            _log(f"no OpenVINO {dtype} GEMM here ({str(e).splitlines()[0]})")
            continue
        request = compiled.create_infer_request()
        out.append(Entry(f"gemm-{dtype}-openvino", "gemm", dtype, f"OpenVINO MatMul {n}^3 {dtype}",
                         lambda _, r=request: r.infer({0: x}), 2.0 * n ** 3))
    return out


def _build(model: str, precision: str, backend: str, out: Path, cache: Path, calib_clips: int, threads: int,
           seed: int) -> Path:
    from export.bundle.build import BuildRequest, build_bundle

    # Parity is recorded, not enforced: this benchmark measures accuracy itself, on more clips (random-weight presets
    # have flat logits over 400 classes, where a 2-clip top-5 agreement says little).
    req = BuildRequest(model=model, precision=precision, backend=backend, out=str(out), cache_dir=str(cache),
                       calib_clips=calib_clips, parity_clips=2, threads=threads, seed=seed, batch=(1, 1, 1),
                       allow_parity_failure=True)
    return build_bundle(req)


def _load_times(bundle: Path, threads: int, work: Path) -> dict[str, float]:
    """First load (compiles, writes the compiled-model cache) and second load (imports it) of an OpenVINO bundle."""
    import shutil

    from runtime import Engine

    cache = work / "ov-load-cache"
    shutil.rmtree(cache, ignore_errors=True)
    out = {}
    for which in ("first", "second"):
        t0 = time.perf_counter()
        e = Engine(bundle, threads=threads, cache_dir=cache)
        out[f"{which}_load_s"] = round(time.perf_counter() - t0, 3)
        out[f"{which}_from_cache"] = e.describe()["loaded_from_cache"]
        e.close()
    shutil.rmtree(cache, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- the run

def run_bench(model: str = "base", threads: int | None = None, rounds: int = 7, warmup: int = 1, eval_clips: int = 8,
              calib_clips: int = 16, gemm_n: int = 2048, seed: int = 0, cache_dir: str | os.PathLike = "artifacts/cache",
              work_dir: str | os.PathLike = "artifacts/bench/cpu/work") -> dict[str, Any]:
    """Build, check, time; returns the report (see the module docstring)."""
    import onnxruntime as ort
    import torch

    from models import PRESETS, count_flops, load_source
    from runtime import Engine

    from calibration.clips.calibset import load_clips

    from export.bench.onnx_forms import _export_theirs

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    cache, work = Path(cache_dir), Path(work_dir)
    cache.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # 1. The model: ours and the transformers anchor with the same weights.
    if model in PRESETS:  # random weights, made in transformers and loaded into ours: one set of weights
        hf_dir = _hf_checkpoint(model, seed, cache)
        source_arg = str(hf_dir)
    else:
        source_arg = model
    _log(f"1/5 model {model} ({source_arg})")
    net, _labels, pre, source = load_source(source_arg, seed)
    if model not in PRESETS:
        is_hf = Path(model).is_dir() and (Path(model) / "config.json").is_file()
        hf_dir = Path(model) if is_hf else _hf_twin(net, source["checkpoint_sha256"], cache)
    cfg = net.config
    flops = float(count_flops(cfg)["flops"])
    clips = load_clips("synthetic", pre, n=eval_clips, seed=seed + 5000)  # held out: calibration uses seed, parity +1000
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(clips[i:i + 1])).numpy() for i in range(len(clips))])

    # 2. Our bundles (make engine's code path; the ONNX exports and calibrations are cached).
    _log("2/5 bundles")
    try:
        import openvino  # noqa: F401
        have_ov = True
    except ImportError:
        have_ov = False
        _log("openvino is not installed: the OpenVINO rows are left out (pip install -e './runtime[openvino]')")
    specs = [("ort-fp32", "fp32", "onnxruntime"), ("ort-int8-dynamic", "int8", "onnxruntime")]
    if have_ov:
        specs += [("ov-fp32", "fp32", "openvino"), ("ov-fp16", "fp16", "openvino"), ("ov-int8", "int8", "openvino")]
    bundles = {name: _build(source_arg, p, b, work / "bundles" / name, cache, calib_clips, threads, seed)
               for name, p, b in specs}

    # 3. Engines and anchors.
    _log("3/5 engines and anchors")
    entries: list[Entry] = []

    def torch_fp32(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    def torch_bf16(x: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(torch.from_numpy(x)).float().numpy()

    entries.append(Entry("pytorch-fp32", "anchor", "fp32", "PyTorch eager FP32 (the reference)", torch_fp32, flops))
    entries.append(Entry("pytorch-bf16", "anchor", "bf16", "PyTorch eager, bf16 autocast", torch_bf16, flops))

    def ort_session(path: Path) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    # The plain transformers export of the same weights, ONNX Runtime FP32 (exported once per weights).
    import transformers

    theirs = cache / "bench_cpu" / f"transformers-{Path(hf_dir).name}.onnx"
    if not theirs.is_file():
        hf = transformers.TimesformerForVideoClassification.from_pretrained(str(hf_dir)).eval()
        _export_theirs(hf, theirs, torch.from_numpy(clips[:1]), 18)
        del hf
    sess = ort_session(theirs)
    iname = sess.get_inputs()[0].name
    entries.append(Entry("transformers-ort-fp32", "anchor", "fp32",
                         "plain transformers export (torch.onnx.export dynamo, opset 18), ONNX Runtime FP32",
                         lambda x, s=sess, n=iname: s.run(None, {n: x})[0], flops))

    engines: dict[str, Any] = {}
    what = {"ort-fp32": "ours, ONNX Runtime FP32", "ort-int8-dynamic": "ours, ONNX Runtime INT8 (dynamic)",
            "ov-fp32": "ours, OpenVINO FP32 (f32 hint)", "ov-fp16": "ours, OpenVINO FP16 bundle",
            "ov-int8": "ours, OpenVINO INT8 (the TensorRT Q/DQ file, q/k/v split)"}
    dtype = {"ort-fp32": "fp32", "ort-int8-dynamic": "int8", "ov-fp32": "fp32", "ov-fp16": "bf16", "ov-int8": "int8"}
    for name, bundle in bundles.items():
        e = Engine(bundle, threads=threads)
        engines[name] = e
        d = e.describe()
        info = {"bundle": str(bundle), "backend_version": e.manifest.get("backend_version"),
                "parity_at_build": {k: e.manifest["parity"].get(k) for k in ("passed", "failures", "min_cosine",
                                                                             "max_abs_logit")}}
        if d["backend"] == "openvino":
            info["inference_precision"] = d["inference_precision"]
            if name == "ov-fp16" and d["inference_precision"] == "f32":
                dtype[name] = "fp32"
        entries.append(Entry(name, "ours", dtype[name], what[name] + (
            f", {d['inference_precision']} inference" if d["backend"] == "openvino" else ""), e.infer, flops, info))
    qdq_file = None
    if "ov-int8" in bundles:
        qdq_file = bundles["ov-int8"] / engines["ov-int8"].manifest["engine_file"]
        sess_q = ort_session(qdq_file)
        entries.insert([x.name for x in entries].index("ort-int8-dynamic") + 1, Entry(
            "ort-int8-qdq", "ours", "int8", "ours, the TensorRT Q/DQ INT8 file in ONNX Runtime",
            lambda x, s=sess_q: s.run(None, {"video": x})[0], flops, {"file": str(qdq_file)}))

    # 4. Accuracy on the held-out clips (also the warm-up of every engine).
    _log(f"4/5 accuracy on {len(clips)} held-out clips")
    accuracy: dict[str, dict[str, Any]] = {}
    for entry in entries:
        out = np.concatenate([entry.run(clips[i:i + 1]) for i in range(len(clips))]).astype(np.float32)
        m = compare_logits(ref, out)
        m["cosines"] = [round(float(c), 7) for c in cosine_rows(ref, out)]
        accuracy[entry.name] = m

    # 5. Interleaved timing rounds, GEMMs included.
    gemms = _gemm_entries(gemm_n, threads)
    timed = entries + gemms
    x = np.ascontiguousarray(clips[:1])
    for entry in timed:
        for _ in range(warmup):
            entry.run(x)
    _log(f"5/5 timing: {rounds} interleaved rounds of {len(timed)} entries, {threads} threads")
    times: dict[str, list[float]] = {e.name: [] for e in timed}
    for r in range(rounds):
        order = timed[r % len(timed):] + timed[:r % len(timed)]
        for entry in order:
            t0 = time.perf_counter()
            entry.run(x)
            times[entry.name].append(time.perf_counter() - t0)
        _log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{e.name} {times[e.name][-1]:.3f}s" for e in entries))
    load = {name: _load_times(bundles[name], threads, work) for name in bundles if name.startswith("ov-")}
    for e in engines.values():
        e.close()

    results: dict[str, dict[str, Any]] = {}
    for entry in timed:
        t = np.array(times[entry.name])
        med = float(np.median(t))
        results[entry.name] = {
            "group": entry.group, "dtype": entry.dtype, "what": entry.what, "median_s": med, "min_s": float(t.min()),
            "p10_s": float(np.percentile(t, 10)), "p90_s": float(np.percentile(t, 90)),
            "spread": float((np.percentile(t, 90) - np.percentile(t, 10)) / med), "runs_s": [round(v, 5) for v in t],
            "gflops": entry.flops / med / 1e9, "gflops_best": entry.flops / float(t.min()) / 1e9,
            **({"info": entry.info} if entry.info else {})}
    peaks = {}
    for d in ("fp32", "bf16", "int8"):
        g = [results[e.name]["gflops_best"] for e in gemms if e.dtype == d]
        if g:
            peaks[d] = max(g)
    base = results.get(BASELINE)
    for name, r in results.items():
        if r["group"] == "gemm":
            continue
        r["accuracy"] = {k: v for k, v in accuracy[name].items() if k != "cosines"}
        r["cosines"] = accuracy[name]["cosines"]
        if base:
            r["ratio_vs_ort_fp32"] = r["median_s"] / base["median_s"]
            r["ratio_min_vs_ort_fp32"] = r["min_s"] / base["min_s"]
        if r["dtype"] in peaks:
            r["fraction_of_peak"] = r["gflops"] / peaks[r["dtype"]]
            r["floor_s"] = flops / (peaks[r["dtype"]] * 1e9)
    checks = {}
    for name, t in TARGETS.items():
        if name in results and base:
            r = results[name]
            checks[name] = {**t, "ratio": r["ratio_vs_ort_fp32"], "mean_cosine": r["accuracy"]["mean_cosine"],
                            "passed": bool(r["ratio_vs_ort_fp32"] <= t["max_ratio"]
                                           and r["accuracy"]["mean_cosine"] >= t["min_mean_cosine"])}
    versions = {"torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
    if have_ov:
        import openvino as ov

        versions["openvino"] = ov.__version__.split("-")[0]
        versions["openvino_cpu"] = str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
        versions["openvino_capabilities"] = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return {
        "model": model, "source": source_arg, "config": cfg.to_dict(), "gflop_per_clip": flops / 1e9,
        "batch": 1, "threads": threads, "rounds": rounds, "warmup": warmup, "eval_clips": len(clips),
        "eval_seed": seed + 5000, "calib_clips": calib_clips, "calib_seed": seed, "gemm_n": gemm_n,
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
                    "load_average_1min_at_end": os.getloadavg()[0]},
        "versions": versions, "peak_gflops": peaks, "baseline": BASELINE, "targets": checks, "load": load,
        "results": results, "seconds": round(time.perf_counter() - t_start, 1),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- the report

def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one table of engines, one of GEMM peaks, the targets and the load times."""
    m = report["machine"]
    lines = [f"# CPU benchmark: {report['model']} ({report['gflop_per_clip']:.1f} GFLOP per clip), batch 1", "",
             f"{m['processor']}, {report['threads']} threads ({m['cpu_count']} cores); "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "openvino_capabilities")
             + f". {report['rounds']} interleaved rounds after {report['warmup']} warm-up; accuracy on "
             f"{report['eval_clips']} held-out clips (seed {report['eval_seed']}) against FP32 PyTorch. 1-min load "
             f"average at the end: {m['load_average_1min_at_end']:.1f}.", "",
             "| engine | median s | min s | spread (p10-p90)/median | vs ORT FP32 | GFLOP/s | of its peak | "
             "mean cosine | min cosine | top-1 agree | max abs dlogit | what |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        if r["group"] == "gemm":
            continue
        a = r["accuracy"]
        ratio = f"{r['ratio_vs_ort_fp32']:.3f}" if "ratio_vs_ort_fp32" in r else "-"
        frac = f"{r['fraction_of_peak']:.0%} {r['dtype']}" if "fraction_of_peak" in r else "-"
        lines.append(f"| {name} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['spread']:.0%} | {ratio} | "
                     f"{r['gflops']:.0f} | {frac} | {a['mean_cosine']:.6f} | {a['min_cosine']:.6f} | "
                     f"{a['top1_agreement']:.2f} | {a['max_abs_logit']:.2e} | {r['what']} |")
    lines += ["", "Peak of this machine in the same run (best GEMM round):", "",
              "| GEMM | median s | best GFLOP/s (GOP/s for int8) | compute floor per clip at that peak |",
              "|---|---|---|---|"]
    for name, r in report["results"].items():
        if r["group"] == "gemm":
            lines.append(f"| {r['what']} | {r['median_s']:.4f} | {r['gflops_best']:.0f} | "
                         f"{report['gflop_per_clip'] / r['gflops_best']:.3f} s |")
    lines += ["", "Peak used per dtype (best GEMM): " + ", ".join(f"{d} {v:.0f} GFLOP/s"
                                                              for d, v in report["peak_gflops"].items())
              + " (a lower bound: a whole model can run faster than a GEMM that misses the hardware's peak)."]
    if report["targets"]:
        lines += ["", "Targets (issue 18; latency ratios against our ONNX Runtime FP32 in this run):", ""]
        for name, c in report["targets"].items():
            lines.append(f"- {name}: {c['ratio']:.3f}x (needs <= {c['max_ratio']}), mean cosine "
                         f"{c['mean_cosine']:.6f} (needs >= {c['min_mean_cosine']}): "
                         f"**{'passed' if c['passed'] else 'NOT met'}**")
    if report["load"]:
        lines += ["", "OpenVINO bundle load (compiled-model cache in a user folder):", ""]
        for name, d in report["load"].items():
            lines.append(f"- {name}: first load {d['first_load_s']:.2f} s (compile), second {d['second_load_s']:.2f} s "
                         f"(from cache: {d['second_from_cache']})")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Median latency per engine (bars, p10-p90 whiskers) with the compute floor of each dtype's measured peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, r) for n, r in report["results"].items() if r["group"] != "gemm"]
    colors = {"anchor": "#999999", "ours": "#1f77b4"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    med = np.array([r["median_s"] for _, r in rows])
    lo = med - np.array([r["p10_s"] for _, r in rows])
    hi = np.array([r["p90_s"] for _, r in rows]) - med
    ax.barh(y, med, xerr=[lo, hi], color=[colors[r["group"]] for _, r in rows], capsize=3)
    ax.set_yticks(y, [f"{n} ({r['dtype']})" for n, r in rows])
    ax.invert_yaxis()
    styles = {"fp32": ":", "bf16": "--", "int8": "-."}
    for d, peak in report["peak_gflops"].items():
        ax.axvline(report["gflop_per_clip"] / peak, color="k", linestyle=styles[d], linewidth=1,
                   label=f"{d} floor at the GEMM peak ({peak:.0f} GFLOP/s)")
    ax.set_xlabel("seconds per clip (median; whiskers p10-p90)")
    ax.set_title(f"{report['model']}, batch 1, {report['threads']} threads: {report['machine']['processor']}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


@user_errors("make bench-cpu", extra=(BuildError,))
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bench.cpu", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="preset (default base) or checkpoint (.safetensors, .pyth, "
                    "transformers folder)")
    ap.add_argument("--quick", action="store_true", help="the committed motion model, few rounds: seconds")
    ap.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all cores)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--eval-clips", type=int, default=None)
    ap.add_argument("--calib-clips", type=int, default=16)
    ap.add_argument("--gemm-n", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="artifacts/cache")
    ap.add_argument("--out-dir", default=None, help="default artifacts/bench/cpu (--quick: artifacts/bench/cpu-quick)")
    a = ap.parse_args(argv)
    out = Path(a.out_dir or ("artifacts/bench/cpu-quick" if a.quick else "artifacts/bench/cpu"))
    model = a.model or ("models/weights/motion_tiny.safetensors" if a.quick else "base")
    report = run_bench(model=model, threads=a.threads, rounds=a.rounds or (3 if a.quick else 7), warmup=1,
                       eval_clips=a.eval_clips or (4 if a.quick else 8), calib_clips=a.calib_clips,
                       gemm_n=a.gemm_n or (512 if a.quick else 2048), seed=a.seed, cache_dir=a.cache_dir,
                       work_dir=out / "work")
    write_json_atomic(out / "cpu.json", report)
    md = markdown(report)
    write_text_atomic(out / "cpu.md", md)
    plot(report, out / "cpu.png")
    print(md)
    _log(f"wrote {out / 'cpu.json'}, {out / 'cpu.md'} and {out / 'cpu.png'} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
