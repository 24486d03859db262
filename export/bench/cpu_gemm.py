"""The GEMM microbenchmark of ``make bench-cpu`` (:mod:`export.bench.cpu`): square FP32/BF16/INT8 matrix products in
torch, numpy and OpenVINO, timed in the same rounds as the engines, so that the best of them per dtype is the peak each
engine's achieved GFLOP/s is held to; and :class:`Entry`, the one type of thing those rounds time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from export.bench.harness import logger

_log = logger("cpu")

__all__ = ["Entry", "gemm_entries"]


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


def gemm_entries(n: int, threads: int) -> list[Entry]:
    """FP32/BF16/INT8 square GEMMs of size ``n`` (2n^3 FLOP or integer OP each)."""
    import torch

    rng = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(n, n, generator=rng), torch.randn(n, n, generator=rng)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    a8 = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=rng)
    b8 = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=rng)
    an, bn = a32.numpy(), b32.numpy()
    flops = 2.0 * n**3
    entries = [
        Entry("gemm-fp32-torch", "gemm", "fp32", f"torch.mm {n}x{n}x{n} float32", lambda _: torch.mm(a32, b32), flops),
        Entry("gemm-fp32-numpy", "gemm", "fp32", f"numpy matmul {n}^3 float32", lambda _: an @ bn, flops),
        Entry("gemm-bf16-torch", "gemm", "bf16", f"torch.mm {n}^3 bfloat16", lambda _: torch.mm(a16, b16), flops),
    ]
    try:
        torch._int_mm(a8[:32, :32].contiguous(), b8[:32, :32].contiguous())
        entries.append(
            Entry(
                "gemm-int8-torch",
                "gemm",
                "int8",
                f"torch._int_mm {n}^3 int8 -> int32",
                lambda _: torch._int_mm(a8, b8),
                flops,
            )
        )
    except Exception as e:  # noqa: BLE001 - older torch builds lack the CPU kernel
        _log.info(f"no INT8 GEMM in this torch ({type(e).__name__}: {e})")
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
            w = ops.multiply(
                ops.convert(ops.constant(rng.integers(-127, 127, (n, n), dtype=np.int8)), ov.Type.f32),
                ops.constant(np.full((n, 1), 0.01, np.float32)),
            )
        else:
            act, w = a, ops.constant(rng.standard_normal((n, n)).astype(np.float32))
        model = ov.Model([ops.matmul(act, w, False, True)], [a])
        try:
            compiled = core.compile_model(
                model,
                "CPU",
                {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads},
            )
        except RuntimeError as e:  # bf16 on a CPU without it, for example
            _log.info(f"no OpenVINO {dtype} GEMM here ({str(e).splitlines()[0]})")
            continue
        request = compiled.create_infer_request()
        out.append(
            Entry(
                f"gemm-{dtype}-openvino",
                "gemm",
                dtype,
                f"OpenVINO MatMul {n}^3 {dtype}",
                lambda _, r=request: r.infer({0: x}),
                2.0 * n**3,
            )
        )
    return out
