"""A CPU INT8 bundle's latency against ONNX Runtime FP32 of the same model, on the CPU that builds it (issue 25).

INT8 is not faster on every CPU: x86 without VNNI runs ONNX Runtime's exact U8U8 kernels, and OpenVINO INT8 took
1.24x the time of ONNX Runtime FP32 on an AVX2-only AMD Zen 3 (base 8x224). So ``make engine PRECISION=int8`` on
a CPU backend times the staged bundle against ONNX Runtime FP32 of the model's FP32 ONNX in its ``onnxruntime``
attention form (the model of our FP32 bundle), batch 1, in interleaved rounds; records it in the manifest
(``build.speed_vs_fp32``, naming this CPU's ISA); and warns when INT8 is not faster here. A timing that cannot
run (e.g. no memory for the FP32 model beside the bundle) is recorded as an error and warned about; the bundle,
whose parity has passed, is still published. A ratio is claimed only
when the rounds agree (:func:`export.bench.harness.ratio_verdict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.onnxruntime_session import cpu_session_options
from runtime.cpu_isa import cpu_isa

from export.bench.harness import interleaved_rounds, ratio_verdict, time_call

__all__ = ["ROUNDS", "speed_vs_fp32", "speed_note"]

#: interleaved rounds: the fewest a ratio may be claimed from
ROUNDS = 3
#: each round runs a backend for about this long (its median call is the round's time): one call for base 8x224
ROUND_SECONDS = 0.25


def speed_vs_fp32(engine: Any, fp32_onnx: Path, threads: int | None = None, rounds: int = ROUNDS) -> dict[str, Any]:
    """Time ``engine`` (a ``runtime.Engine``) against ONNX Runtime FP32 of ``fp32_onnx`` at the engine's smallest
    batch; ``threads`` as the bundle's session (None: each backend's default)."""
    import onnxruntime as ort

    batch = engine.batch_range[0]
    shape = [batch, *engine.manifest["input"]["shape"][1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(
        str(fp32_onnx), cpu_session_options(threads, level="all"), providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    fns = {"int8": lambda: engine.infer(x), "fp32": lambda: sess.run(None, {name: x})}
    iters = {k: max(1, min(50, int(ROUND_SECONDS / min(time_call(f, 2, warmup=1))))) for k, f in fns.items()}
    r = interleaved_rounds(fns, rounds=rounds, iters=iters, warmup=0)
    v = ratio_verdict(r.round_medians("int8"), r.round_medians("fp32"), names=("the INT8 bundle", "ONNX Runtime FP32"))
    return {
        "cpu": cpu_isa().describe(),
        "batch": batch,
        "rounds": rounds,
        "calls_per_round": iters,
        "int8_ms": round(v["subject"]["median_ms"], 3),
        "fp32_ms": round(v["reference"]["median_ms"], 3),
        "ratio": None if v["ratio"] is None else round(v["ratio"], 3),
        "reason": v["reason"],
        "reference": f"ONNX Runtime FP32 of {fp32_onnx.name} ({'default' if not threads else threads} threads)",
    }


def speed_note(record: dict[str, Any], backend: str) -> tuple[bool, str]:
    """Whether the build should warn, and the line: INT8 measured not faster than ONNX Runtime FP32 here."""
    ratio = record.get("ratio")
    medians = f"{record['int8_ms']:.1f} ms against {record['fp32_ms']:.1f} ms, batch {record.get('batch', 1)}"
    if ratio is None:
        return False, f"INT8 {backend} vs ONNX Runtime FP32 on {record['cpu']}: {medians}; {record['reason']}"
    if ratio >= 1.0:
        return True, (
            f"INT8 {backend} took {ratio:.2f}x the time of ONNX Runtime FP32 on this CPU ({record['cpu']}; "
            f"{medians}): PRECISION=fp32 BACKEND=onnxruntime is faster here"
        )
    return False, f"INT8 {backend}: {ratio:.2f}x the time of ONNX Runtime FP32 on {record['cpu']} ({medians})"
