"""This CPU's integer-matmul instruction set, as INT8 kernels see it (issue 25).

x86 CPUs without VNNI or AMX multiply u8 x s8 with ``vpmaddubsw``, which adds each pair of products in 16 bits and
saturates; with VNNI (``vpdpbusd``), AMX, or ARM's dot-product instructions the products are summed in 32 bits.
:func:`cpu_isa` reports which of these this machine has, and whether oneDNN (OpenVINO's CPU plugin) was capped below
VNNI by ``ONEDNN_MAX_CPU_ISA`` (read by oneDNN once at process start; ``AVX2`` on a VNNI CPU reproduces the
AVX2-only INT8 path exactly, measured on AMD Zen 4 with OpenVINO 2026.4). ONNX Runtime's MLAS chooses its kernels
by CPUID and has no such cap.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from .device import cpu_flags

__all__ = [
    "CpuIsa",
    "cpu_isa",
    "ONEDNN_CAP_ENV",
    "onednn_cap_below_vnni",
    "openvino_capabilities",
    "ort_int8_config",
    "openvino_int8_check",
    "ORT_PRECISE_INT8_KEY",
]

ONEDNN_CAP_ENV = "ONEDNN_MAX_CPU_ISA"
#: oneDNN's ``ONEDNN_MAX_CPU_ISA`` values that leave out every VNNI/AMX instruction (dnnl_cpu_isa_t names)
_ONEDNN_NO_VNNI = ("SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC", "AVX512_MIC_4OPS", "DEFAULT_NO_VNNI")
#: x86 feature flags (Linux /proc/cpuinfo spelling) with 32-bit int8 dot products
_X86_DOT = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))


@dataclass(frozen=True)
class CpuIsa:
    """What this CPU's INT8 matmuls run on.

    ``int8_dot``: the instruction family (``"AMX"``, ``"AVX-512 VNNI"``, ``"AVX-VNNI"``, ``"vpmaddubsw"`` for x86
    without any of them, ``"ARM dotprod"``, ``"ARM NEON"``, or ``"unknown"``); ``pairs_saturate``: u8 x s8 pair
    sums saturate at 16 bits in the native kernels (x86 without VNNI/AMX); ``onednn_pairs_saturate``: the same for
    oneDNN/OpenVINO in this process, which also holds when ``ONEDNN_MAX_CPU_ISA`` caps a VNNI CPU below VNNI.
    """

    arch: str
    name: str
    int8_dot: str
    pairs_saturate: bool
    onednn_pairs_saturate: bool
    onednn_cap: str | None
    avx512: bool
    avx2: bool

    def describe(self) -> str:
        """One line for reasons and reports, e.g. ``x86_64 AVX2 without VNNI (vpmaddubsw: 16-bit pair sums)``."""
        cap = f"; {ONEDNN_CAP_ENV}={self.onednn_cap}" if self.onednn_cap else ""
        if self.onednn_pairs_saturate and not self.pairs_saturate:
            cap += " (oneDNN/OpenVINO without VNNI: 16-bit saturating pair sums)"
        if self.int8_dot == "vpmaddubsw":
            base = "AVX-512 without VNNI" if self.avx512 else "AVX2 without VNNI" if self.avx2 else "SSE only"
            return f"{self.arch} {base} (vpmaddubsw: 16-bit saturating pair sums){cap}"
        return f"{self.arch} {self.int8_dot}{cap}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "describe": self.describe()}


def onednn_cap_below_vnni(value: str | None) -> bool:
    """Whether an ``ONEDNN_MAX_CPU_ISA`` value leaves oneDNN without VNNI/AMX (``AVX2``, ``AVX512_CORE``...)."""
    return bool(value and value.strip().upper() in _ONEDNN_NO_VNNI)


def openvino_capabilities(caps: list[str], cap: str | None = None) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` less what ``ONEDNN_MAX_CPU_ISA`` took away: OpenVINO still lists
    BF16/FP16 under a cap below AVX-512 BF16, and then fails to compile bf16 nodes (a Softmax under ``AVX2``)."""
    cap = (os.environ.get(ONEDNN_CAP_ENV) if cap is None else cap) or ""
    if cap.strip().upper() in _ONEDNN_NO_VNNI + ("AVX512_CORE_VNNI", "AVX2_VNNI"):
        return [c for c in caps if c not in ("BF16", "FP16")]
    return list(caps)


@lru_cache(maxsize=None)
def _detect(arch: str, cap: str | None) -> CpuIsa:
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        flags = cpu_flags()
        if flags is None:
            return CpuIsa(arch, "x86 (flags unknown)", "unknown", True, True, cap, False, False)
        dot = next((label for flag, label in _X86_DOT if flag in flags), "vpmaddubsw")
        saturate = dot == "vpmaddubsw"
        isa = CpuIsa(
            arch, "", dot, saturate, saturate or onednn_cap_below_vnni(cap), cap, "avx512f" in flags, "avx2" in flags
        )
        return CpuIsa(**{**asdict(isa), "name": isa.describe()})
    if arch in ("aarch64", "arm64"):
        flags = cpu_flags() or set()
        dot = "ARM dotprod" if "asimddp" in flags or platform.system() == "Darwin" else "ARM NEON"
        return CpuIsa(arch, f"{arch} {dot}", dot, False, False, cap, False, False)
    return CpuIsa(arch, f"{arch} (unknown)", "unknown", False, False, cap, False, False)


def cpu_isa() -> CpuIsa:
    """This machine's INT8 instruction set (cached per ``ONEDNN_MAX_CPU_ISA`` value)."""
    return _detect(platform.machine().lower(), os.environ.get(ONEDNN_CAP_ENV) or None)


#: ONNX Runtime's session switch to its exact U8U8 kernels on x86 without VNNI
#: (onnxruntime_session_options_config_keys.h)
ORT_PRECISE_INT8_KEY = "session.x64quantprecision"


def ort_int8_config(precision: str, isa: CpuIsa | None = None) -> dict[str, str]:
    """ONNX Runtime session config entries an INT8 bundle needs on this CPU: ``session.x64quantprecision=1`` where
    MLAS's U8S8 kernels would saturate (x86 without VNNI/AMX), nothing elsewhere (and nothing for FP32/FP16)."""
    isa = isa or cpu_isa()
    return {ORT_PRECISE_INT8_KEY: "1"} if precision == "int8" and isa.pairs_saturate else {}


def openvino_int8_check(manifest: dict[str, Any], isa: CpuIsa | None = None) -> dict[str, Any] | None:
    """Check an OpenVINO INT8 bundle's CPU INT8 form (``build.openvino.cpu_int8``, written by ``make engine``)
    against this CPU; None for other precisions. Warns (RuntimeWarning, naming the ISA) when the bundle's integer
    sums can saturate here: a ``vnni`` form, or a bundle built before the form was recorded, on x86 without VNNI."""
    import warnings

    if manifest.get("precision") != "int8":
        return None
    isa = isa or cpu_isa()
    record = ((manifest.get("build") or {}).get("openvino") or {}).get("cpu_int8") or {}
    safe = bool(record.get("saturation_safe", False))
    exact = safe or not isa.onednn_pairs_saturate
    if not exact:
        warnings.warn(
            f"this INT8 bundle ({record.get('form', 'no CPU INT8 form recorded')}, built on "
            f"{record.get('built_on', 'an unrecorded CPU')}) has 8-bit weights or int8 activation x "
            f"activation matmuls, whose 16-bit pair sums saturate on this CPU ({isa.describe()}): expect "
            "lower accuracy; rebuild it with make engine PRECISION=int8 (the portable form)",
            RuntimeWarning,
            stacklevel=3,
        )
    return {"cpu": isa.describe(), "form": record.get("form"), "saturation_safe": safe, "exact_here": exact}


#: measured on an AVX2-only CPU (AMD Zen 3, 2 cores, base 8x224, interleaved, quiet machine; issue 25): OpenVINO INT8
#: Q/DQ 4.05 s against 3.26 s for our ONNX Runtime FP32 bundle
AVX2_OPENVINO_INT8_VS_ORT_FP32 = 4.05 / 3.26


def auto_cpu_backend(precision: str | None, openvino_ok: bool, isa: CpuIsa | None = None) -> tuple[str | None, str]:
    """``auto``'s CPU backend for ``precision`` on this ISA, and the reason naming it: None (no preference: OpenVINO
    where it runs, for its speed on VNNI/AMX x86) or ``"onnxruntime"`` for INT8 where oneDNN's INT8 saturates
    (x86 without VNNI), where OpenVINO INT8 was slower than ONNX Runtime FP32 and needs the 7-bit form, and ONNX
    Runtime's dynamic INT8 runs exact (``session.x64quantprecision``, :func:`ort_int8_config`)."""
    isa = isa or cpu_isa()
    if precision == "int8" and isa.onednn_pairs_saturate and isa.int8_dot != "unknown":
        ratio = AVX2_OPENVINO_INT8_VS_ORT_FP32
        return "onnxruntime", (
            f"this CPU is {isa.describe()}: OpenVINO INT8 measured {ratio:.2f}x "
            "the latency of ONNX Runtime FP32 on such a CPU (AMD Zen 3, base 8x224) and needs 7-bit "
            "weights there; ONNX Runtime dynamic INT8 runs with its exact U8U8 kernels "
            f"({ORT_PRECISE_INT8_KEY}=1)"
        )
    return (None, f"this CPU is {isa.describe()}" + ("" if openvino_ok else "; OpenVINO not usable"))
