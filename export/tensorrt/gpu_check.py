"""``make gpu-check``: the one prepared check of the TensorRT path on a machine with an NVIDIA GPU and TensorRT.

Steps (about 10 minutes on one datacenter GPU; each step is skipped, and says so, once the budget is spent):

1. the TensorRT tests (``tests/export/test_tensorrt_gpu.py``, ``tests/export/test_tensorrt_build.py``);
2. FP32/FP16/INT8 engines of the motion model and of a base-size preset through ``make engine``'s code;
3. each engine against ONNX Runtime on the CPU (the FP32 ONNX) on the same clips;
4. the runtime with and without CUDA graphs over batches 1, 3, 4, 3, 1 (outputs must agree);
5. free device memory before opening and after ``close()`` (``cudaMemGetInfo``).

Writes one JSON report (``--out``, default ``artifacts/gpu_check.json``) and exits 0 when every check passed,
1 when one failed. Without TensorRT, cuda-python or a GPU it prints exactly what is missing and exits 2.
"""
from __future__ import annotations

import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser
from runtime.files import sha256_file, write_json_atomic

from runtime.cli_args import user_errors

BUDGET_S = 600
BATCHES = (1, 3, 4, 3, 1)
MODELS = ("models/weights/motion_tiny.safetensors", "base")


def missing() -> list[str]:
    """What this machine lacks for the check (empty: nothing)."""
    from runtime.backends.tensorrt_detect import tensorrt_available

    out = []
    ok, reason = tensorrt_available()
    if not ok:
        out.append(reason)
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        out.append(f"onnxruntime is not importable ({e}); pip install -e .")
    return out


def _free_device_memory() -> int:
    from runtime.backends.tensorrt_backend import cuda_call, import_cudart

    free, _total = cuda_call(import_cudart(), "cudaMemGetInfo")
    return int(free)


def _fp32_onnx(cache: Path, sha: str) -> Path | None:
    for p in sorted(cache.glob("fp32-*.onnx")):
        if sha256_file(p) == sha:
            return p
    return None


def check_bundle(bundle: Path, cache: Path, clips: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime CPU vs the engine, graphs vs no graphs over BATCHES, device memory around close()."""
    import onnxruntime as ort

    from calibration.precision.metrics import compare_logits
    from runtime import Engine

    res: dict[str, Any] = {"bundle": str(bundle)}
    with Engine(bundle) as probe:
        manifest = probe.manifest
    ref_path = _fp32_onnx(cache, manifest["source"]["fp32_onnx_sha256"])
    outs: dict[bool, list[np.ndarray]] = {}
    for graph in (False, True):
        before = _free_device_memory()
        engine = Engine(bundle, device="cuda:0", cuda_graph=graph)
        outs[graph] = [engine.infer(clips[:b]) for b in BATCHES]
        res[f"describe_graph_{graph}"] = engine.backend.describe()
        engine.close()
        after = _free_device_memory()
        res[f"device_memory_leak_bytes_graph_{graph}"] = before - after
    res["graphs_match_plain"] = all(np.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(outs[False], outs[True]))
    if ref_path is not None:
        sess = ort.InferenceSession(str(ref_path), providers=["CPUExecutionProvider"])
        ref = np.concatenate([sess.run(None, {"video": clips[i:i + 1]})[0] for i in range(BATCHES[2])])
        res["vs_onnxruntime_cpu"] = compare_logits(ref, outs[False][2])
    else:
        res["vs_onnxruntime_cpu"] = None
    leak = max(res["device_memory_leak_bytes_graph_False"], res["device_memory_leak_bytes_graph_True"])
    res["passed"] = bool(res["graphs_match_plain"] and leak < (16 << 20)
                         and (res["vs_onnxruntime_cpu"] is None or res["vs_onnxruntime_cpu"]["min_cosine"] > 0.99))
    return res


@user_errors("python -m export.tensorrt.gpu_check")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.tensorrt.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="artifacts/gpu_check.json")
    ap.add_argument("--work", default="artifacts/gpu_check")
    ap.add_argument("--budget-s", type=int, default=BUDGET_S)
    a = ap.parse_args(argv)
    lacking = missing()
    if lacking:
        print("make gpu-check: missing: " + "; ".join(lacking), file=sys.stderr)
        return 2
    from export.bundle.build import BuildRequest, build_bundle
    from runtime.backends.tensorrt_detect import tensorrt_available

    t0 = time.perf_counter()
    report: dict[str, Any] = {"machine": tensorrt_available()[1], "steps": []}
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/export/test_tensorrt_gpu.py", "tests/export/test_tensorrt_build.py"],
                       cwd=root, capture_output=True, text=True, timeout=a.budget_s)
    report["steps"].append({"step": "tensorrt tests", "passed": r.returncode == 0, "tail": r.stdout[-2000:]})
    work = Path(a.work)
    for model in MODELS:
        for precision in ("fp32", "fp16", "int8"):
            step: dict[str, Any] = {"step": f"{Path(model).stem} {precision}"}
            if time.perf_counter() - t0 > a.budget_s:
                step.update(passed=None, skipped=f"time budget of {a.budget_s} s spent")
                report["steps"].append(step)
                continue
            try:
                t = time.perf_counter()
                req = BuildRequest(model=model, precision=precision, backend="tensorrt", batch=(1, 2, 4),
                                   out=str(work / f"{Path(model).stem}-{precision}"), cache_dir=str(work / "cache"),
                                   calib_clips=4, parity_clips=4, allow_parity_failure=True)
                bundle = build_bundle(req)
                step["build_seconds"] = round(time.perf_counter() - t, 1)
                from calibration.clips.calibset import load_clips
                from runtime import Engine

                with Engine(bundle) as e:
                    pre = e.preprocess
                clips = load_clips("synthetic", pre, n=4, seed=7)
                step.update(check_bundle(bundle, work / "cache", clips))
            except Exception as e:  # noqa: BLE001 - record and go on to the next engine
                step.update(passed=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            report["steps"].append(step)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["passed"] = all(s.get("passed") is not False for s in report["steps"])
    write_json_atomic(a.out, report)
    print(f"make gpu-check: {'passed' if report['passed'] else 'FAILED'} in {report['seconds']} s; report {a.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
