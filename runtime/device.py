"""The machine record: what a device is, as far as the numbers an engine computes can depend on it.

:func:`fingerprint` returns one dict (CPU model and the instruction sets that change kernels: AVX2, AVX-512, VNNI,
AMX, BF16, FP16, NEON; the GPU's name, compute capability, driver and CUDA; the Python, numpy and backend versions;
the environment switches that cap a CPU's ISA), and ``fingerprint()["key"]``, a hash of the parts that can change a
result (not the host name, not the memory size). :func:`summary` makes it one line. No torch, no psutil: ``/proc``,
``platform``, ``nvidia-smi`` (or ``libcuda`` through ctypes, as on Jetson) and package metadata only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["fingerprint", "summary", "cpu_info", "cpu_flags", "gpu_info", "package_versions", "FINGERPRINT_VERSION"]

#: bumped when the record's content changes, so cached verdicts keyed by an older record are not reused
FINGERPRINT_VERSION = 1
#: /proc/cpuinfo flags (x86) and features (ARM) that select different kernels, under the names reported here
_X86_ISA = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
    "amx_fp16": "amx_fp16",
}
_ARM_ISA = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "asimdhp": "fp16",
    "bf16": "bf16",
    "i8mm": "i8mm",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}
#: environment variables that change which kernels run (oneDNN in OpenVINO and ONNX Runtime, threads)
_ENV = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_TF32_OVERRIDE",
    "ORT_DISABLE_ALL_OPTIMIZATIONS",
)
_PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-cu13",
    "cuda-python",
    "cuda-bindings",
)
#: fields that describe the machine but cannot change what it computes: left out of the key
_NOT_IN_KEY = ("host", "os", "key", "gpu_memory_mib", "pci_bus_id")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's block of ``/proc/cpuinfo`` (empty where there is none), keys lower-case."""
    fields: dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux spells them (x86 ``flags``, ARM ``features``); None where unknown."""
    fields = _cpuinfo_fields()
    text = fields.get("flags") or fields.get("features")
    return set(text.split()) if text else None


def cpu_info() -> dict[str, Any]:
    """CPU model, vendor, family/model, logical cores and the ISA extensions that select kernels."""
    machine = platform.machine().lower()
    fields = _cpuinfo_fields()
    flags = cpu_flags() or set()
    table = _ARM_ISA if machine in ("aarch64", "arm64") or machine.startswith("arm") else _X86_ISA
    isa = sorted({name for flag, name in table.items() if flag in flags})
    if machine in ("aarch64", "arm64") and not flags:  # no /proc (macOS): NEON is part of AArch64
        isa = ["neon"]
    model = fields.get("model name") or fields.get("hardware") or platform.processor() or machine
    jetson = _read("/proc/device-tree/model").strip("\x00\n ")
    out: dict[str, Any] = {
        "model": model,
        "machine": machine,
        "logical_cores": os.cpu_count(),
        "isa": isa,
        "vendor": fields.get("vendor_id") or fields.get("cpu implementer"),
        "family": fields.get("cpu family"),
        "cpu_model": fields.get("model"),
    }
    if jetson:
        out["board"] = jetson
    return out


def _nvidia_smi() -> list[dict[str, Any]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    query = "name,compute_cap,driver_version,memory.total,pci.bus_id"
    try:
        res = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20
        )
        head = subprocess.run([exe], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cuda = None
    for token in head.split("CUDA Version:")[1:2]:
        cuda = token.split()[0].strip("|") if token.split() else None
    gpus = []
    for line in res.stdout.splitlines() if res.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        mem = parts[3]
        gpus.append(
            {
                "name": parts[0],
                "compute_capability": parts[1],
                "driver": parts[2],
                "cuda_driver_api": cuda,
                "gpu_memory_mib": int(mem) if mem.isdigit() else None,
                "pci_bus_id": parts[4],
            }
        )
    return gpus


def _libcuda() -> list[dict[str, Any]]:
    """GPUs through the CUDA driver API (Jetson has no full nvidia-smi); empty where libcuda does not load."""
    try:
        cu = ctypes.CDLL("libcuda.so.1" if os.name != "nt" else "nvcuda.dll")
    except OSError:
        return []
    n, version = ctypes.c_int(0), ctypes.c_int(0)
    if cu.cuInit(0) != 0 or cu.cuDeviceGetCount(ctypes.byref(n)) != 0:
        return []
    cu.cuDriverGetVersion(ctypes.byref(version))
    v = version.value
    gpus = []
    for i in range(n.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        if cu.cuDeviceGet(ctypes.byref(dev), i) != 0:
            continue
        cu.cuDeviceGetName(name, 256, dev)
        cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
        gpus.append(
            {
                "name": name.value.decode(errors="replace"),
                "compute_capability": f"{major.value}.{minor.value}",
                "driver": None,
                "cuda_driver_api": f"{v // 1000}.{(v % 1000) // 10}" if v else None,
            }
        )
    return gpus


def gpu_info() -> list[dict[str, Any]]:
    """NVIDIA GPUs: name, compute capability, driver, the CUDA version the driver supports; [] without one."""
    gpus = _nvidia_smi() or _libcuda()
    tegra = _read("/etc/nv_tegra_release").splitlines()
    if tegra and gpus:
        for g in gpus:
            g["l4t"] = tegra[0].strip("# ").strip()
    return gpus


def package_versions() -> dict[str, str]:
    """Versions of numpy and the backends (installed distributions; a module without metadata, as JetPack's
    tensorrt, is imported for its ``__version__``)."""
    out: dict[str, str] = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    if not any(k.startswith("tensorrt") for k in out) and importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            out["tensorrt"] = str(tensorrt.__version__)
        except Exception:  # noqa: BLE001 - the stub packages raise more than ImportError
            pass
    return out


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    """What cannot change while the process lives (the GPU query runs a subprocess: once)."""
    return {
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": package_versions(),
    }


def fingerprint() -> dict[str, Any]:
    """The machine record: ``cpu``, ``gpus``, ``os``, ``python``, ``packages``, ``env`` and ``key`` (a SHA-256 of
    everything that can change a result; not the host name or memory)."""
    record = {
        "fingerprint_version": FINGERPRINT_VERSION,
        **json.loads(json.dumps(_static())),
        "env": {k: os.environ[k] for k in _ENV if k in os.environ},
    }
    record["key"] = _key(record)
    return record


def _key(record: dict[str, Any]) -> str:
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in _NOT_IN_KEY}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    text = json.dumps(strip(record), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def summary(record: dict[str, Any] | None = None) -> str:
    """One line: CPU (ISA), GPU (compute capability, driver, CUDA), backend versions."""
    r = record or fingerprint()
    cpu = r["cpu"]
    isa = " ".join(cpu["isa"]) or "no SIMD extensions listed"
    parts = [f"{cpu['model']} ({cpu['machine']}, {cpu['logical_cores']} threads; {isa})"]
    for g in r["gpus"]:
        parts.append(
            f"{g['name']} (sm {g['compute_capability']}, driver {g.get('driver') or '?'}, CUDA "
            f"{g.get('cuda_driver_api') or '?'})"
        )
    if not r["gpus"]:
        parts.append("no NVIDIA GPU")
    pk = r["packages"]
    parts.append(", ".join(f"{k} {v}" for k, v in pk.items() if k != "numpy") or "no backend installed")
    if r["env"]:
        parts.append(" ".join(f"{k}={v}" for k, v in r["env"].items()))
    return "; ".join(parts) + f" [{r['key'][:12]}]"
