"""``make gpu-check``: the one prepared check of the TensorRT path on a machine with an NVIDIA GPU and TensorRT.

Steps, most informative first (:data:`STEPS`); each runs in a process of its own under its own timeout:

1. the motion model FP16 bundle: build through ``make engine``'s code, parity against ONNX Runtime on the CPU
   (the FP32 ONNX) on the same clips, latency at batch 1 with and without CUDA graphs, device memory per
   configuration (plain, CUDA graphs over batches 1, 3, 4, 3, 1) and after ``close()``;
2. the same for INT8 and FP32 (strict FP32: TF32 cleared);
3. the TensorRT tests (``tests/export/test_tensorrt_gpu.py``, ``tests/export/test_tensorrt_build.py``);
4. the base-size preset, FP16, INT8, FP32, as budget allows.

The JSON report (``--out``, default ``artifacts/gpu_check.json``) is written atomically before the first step and
after every step, so a crash or a kill keeps every finished step (steps not run yet are listed as ``pending``).
A step that outlives its timeout is killed (its process group) and recorded as failed; a step that the time
budget leaves out is recorded as ``skipped`` and counts as not passed. Exit 0 only when every step passed, 1
otherwise; without TensorRT, cuda-python or a GPU it prints exactly what is missing and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_args import ArgumentParser, user_errors
from runtime.files import sha256_file, write_json_atomic

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 600
BATCHES = (1, 3, 4, 3, 1)
MOTION = "models/weights/motion_tiny.safetensors"
TESTS = ("tests/export/test_tensorrt_gpu.py", "tests/export/test_tensorrt_build.py")
#: the environment variable naming the file a step writes its JSON result to
STEP_OUT_ENV = "GPU_CHECK_STEP_OUT"


@dataclass(frozen=True)
class Step:
    """One step: ``argv`` (None: this module's own ``--step name``) and the seconds it may take."""

    name: str
    timeout_s: int
    argv: tuple[str, ...] | None = None


STEPS: tuple[Step, ...] = (
    Step(f"{Path(MOTION).stem} fp16", 240),
    Step(f"{Path(MOTION).stem} int8", 240),
    Step(f"{Path(MOTION).stem} fp32", 180),
    Step("tensorrt tests", 240, (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS)),
    Step("base fp16", 420),
    Step("base int8", 480),
    Step("base fp32", 420),
)


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


# ---------------------------------------------------------------------------------------------- one step


def _free_device_memory() -> int:
    from runtime.backends.tensorrt_backend import cuda_call, import_cudart

    free, _total = cuda_call(import_cudart(), "cudaMemGetInfo")
    return int(free)


def _fp32_onnx(cache: Path, sha: str) -> Path | None:
    for p in sorted(cache.glob("fp32-*.onnx")):
        if sha256_file(p) == sha:
            return p
    return None


def _latency_ms(engine: Any, x: np.ndarray, runs: int = 20) -> float:
    engine.infer(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        engine.infer(x)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e3, 3)


def _run_configuration(bundle: Path, clips: np.ndarray, graph: bool) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Batches :data:`BATCHES` through one engine; device memory before, while open (after the runs) and after."""
    from runtime import Engine

    before = _free_device_memory()
    engine = Engine(bundle, device="cuda:0", cuda_graph=graph)
    opened = _free_device_memory()
    outs = [engine.infer(clips[:b]) for b in BATCHES]
    ran = _free_device_memory()
    latency = _latency_ms(engine, clips[:1])
    describe = engine.backend.describe()
    engine.close()
    after = _free_device_memory()
    return outs, {
        "device_memory_open_bytes": before - opened,
        "device_memory_after_runs_bytes": before - ran,
        "device_memory_leak_bytes": before - after,
        "latency_ms_batch1": latency,
        "describe": describe,
    }


def check_bundle(bundle: Path, cache: Path, clips: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime CPU vs the engine, graphs vs no graphs over BATCHES, latency, device memory per configuration."""
    import onnxruntime as ort

    from calibration.precision.metrics import compare_logits
    from runtime import Engine

    with Engine(bundle) as probe:
        manifest = probe.manifest
    res: dict[str, Any] = {
        "bundle": str(bundle),
        "parity_vs_pytorch": manifest.get("parity"),
        "tensorrt_build": {
            k: (manifest.get("build") or {}).get("tensorrt", {}).get(k)
            for k in ("tf32", "attention_softmax", "attention_fallback", "builder_flags")
        },
    }
    outs: dict[bool, list[np.ndarray]] = {}
    for graph in (False, True):
        outs[graph], res[f"cuda_graph_{str(graph).lower()}"] = _run_configuration(bundle, clips, graph)
    res["graphs_match_plain"] = all(np.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(outs[False], outs[True]))
    ref_path = _fp32_onnx(cache, manifest["source"]["fp32_onnx_sha256"])
    res["vs_onnxruntime_cpu"] = None
    if ref_path is not None:
        sess = ort.InferenceSession(str(ref_path), providers=["CPUExecutionProvider"])
        ref = np.concatenate([sess.run(None, {"video": clips[i : i + 1]})[0] for i in range(BATCHES[2])])
        res["vs_onnxruntime_cpu"] = compare_logits(ref, outs[False][2])
    leak = max(res[f"cuda_graph_{g}"]["device_memory_leak_bytes"] for g in ("false", "true"))
    cpu = res["vs_onnxruntime_cpu"]
    res["passed"] = bool(
        res["graphs_match_plain"] and leak < (16 << 20) and cpu is not None and cpu["min_cosine"] > 0.99
    )
    return res


def run_bundle_step(name: str, work: Path) -> dict[str, Any]:
    """Build the bundle ``name`` ("<model stem> <precision>") and check it."""
    from calibration.clips.calibset import load_clips
    from export.bundle.build import BuildRequest, build_bundle
    from runtime import Engine

    stem, precision = name.rsplit(" ", 1)
    model = MOTION if stem == Path(MOTION).stem else stem
    t = time.perf_counter()
    req = BuildRequest(
        model=model,
        precision=precision,
        backend="tensorrt",
        batch=(1, 2, 4),
        out=str(work / f"{stem}-{precision}"),
        cache_dir=str(work / "cache"),
        calib_clips=4,
        parity_clips=4,
        allow_parity_failure=True,
        random_weights=model != MOTION,
    )
    bundle = build_bundle(req)
    step: dict[str, Any] = {"build_seconds": round(time.perf_counter() - t, 1)}
    with Engine(bundle) as e:
        pre = e.preprocess
    clips = load_clips("synthetic", pre, n=4, seed=7)
    step.update(check_bundle(bundle, work / "cache", clips))
    from runtime.check import run_check  # issue 24: the device check of python -m runtime check, on the GPU

    step["device_check"] = run_check(
        bundle, device="cuda:0", blocks="always", batches=[1, 4], concurrency=[1, 2], iterations=20, duration=1.0
    )
    return step


# ----------------------------------------------------------------------------------------- the runner


def _report_base() -> dict[str, Any]:
    from runtime.backends.tensorrt_detect import import_tensorrt, tensorrt_available

    trt_file = str(getattr(import_tensorrt(), "__file__", "") or "")
    return {
        "machine": tensorrt_available()[1],
        "tensorrt_from": trt_file,
        "tensorrt_source": "system (JetPack)" if not trt_file.startswith(sys.prefix) else "venv (pip extra)",
        "status": "running",
        "passed": False,
        "steps": [],
    }


def _run_one(step: Step, work: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``step`` in its own process group; kill the group at ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_step_") as tmp:
        result_file = Path(tmp) / "result.json"
        argv = (
            list(step.argv)
            if step.argv
            else [sys.executable, "-m", "export.tensorrt.gpu_check", "--step", step.name, "--work", str(work)]
        )
        env = {**os.environ, STEP_OUT_ENV: str(result_file)}  # where a step may write its result as JSON
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return {
                "passed": False,
                "error": f"timed out after {timeout_s:.0f} s (killed)",
                "seconds": round(time.perf_counter() - t0, 1),
                "tail": (output or "")[-2000:],
            }
        res: dict[str, Any] = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}
        if result_file.is_file():
            res.update(json.loads(result_file.read_text()))
        res["passed"] = bool(res.get("passed", proc.returncode == 0)) and proc.returncode == 0
        if not res["passed"]:
            res["tail"] = (output or "")[-2000:]
        return res


def run_steps(
    steps: tuple[Step, ...], out: Path, work: Path, budget_s: float, report: dict[str, Any]
) -> dict[str, Any]:
    """Run ``steps`` in order, writing ``report`` to ``out`` before the first and after every step."""
    t0 = time.perf_counter()
    report["steps"] = [{"step": s.name, "status": "pending"} for s in steps]
    write_json_atomic(out, report)
    for i, step in enumerate(steps):
        left = budget_s - (time.perf_counter() - t0)
        if left < min(step.timeout_s, 30):
            entry = {
                "step": step.name,
                "status": "skipped",
                "passed": False,
                "skipped": f"time budget of {budget_s:.0f} s spent ({max(left, 0):.0f} s left, the step may "
                f"take {step.timeout_s} s)",
            }
        else:
            report["steps"][i] = {"step": step.name, "status": "running"}
            write_json_atomic(out, report)
            entry = {"step": step.name, **_run_one(step, work, min(step.timeout_s, left))}
            entry["status"] = "passed" if entry["passed"] else "failed"
        report["steps"][i] = entry
        report["seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(out, report)
    report["status"] = "finished"
    report["passed"] = all(s.get("passed") is True for s in report["steps"])
    write_json_atomic(out, report)
    return report


def _step_main(name: str, work: Path, out: Path) -> int:
    """The child side of one step: run it, write its result as JSON to ``out``."""
    try:
        res = run_bundle_step(name, work)
    except Exception as e:  # noqa: BLE001 - recorded in the report; the parent goes on to the next step
        res = {"passed": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    write_json_atomic(out, res)
    return 0 if res.get("passed") else 1


@user_errors("python -m export.tensorrt.gpu_check")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.tensorrt.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="artifacts/gpu_check.json")
    ap.add_argument("--work", default="artifacts/gpu_check")
    ap.add_argument("--budget-s", type=int, default=BUDGET_S)
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)  # the child side of one step
    a = ap.parse_args(argv)
    if a.step:
        return _step_main(a.step, Path(a.work), Path(os.environ[STEP_OUT_ENV]))
    lacking = missing()
    if lacking:
        print("make gpu-check: missing: " + "; ".join(lacking), file=sys.stderr)
        return 2
    report = run_steps(STEPS, Path(a.out), Path(a.work), a.budget_s, _report_base())
    n_ok = sum(s.get("passed") is True for s in report["steps"])
    print(
        f"make gpu-check: {'passed' if report['passed'] else 'FAILED'} ({n_ok}/{len(report['steps'])} steps passed) "
        f"in {report['seconds']} s; report {a.out}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
