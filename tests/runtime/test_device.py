"""``runtime.device``: the machine record the check, the Engine's verification and the benchmarks share."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import runtime.device as device

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx f16c fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: ignored: only the first block is read
"""
ZEN3 = """vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu sse2 avx f16c fma avx2
"""
ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def _fake_proc(monkeypatch, cpuinfo: str, machine: str, extra: dict[str, str] | None = None) -> None:
    files = {"/proc/cpuinfo": cpuinfo, **(extra or {})}
    monkeypatch.setattr(device, "_read", lambda path: files.get(path, ""))
    monkeypatch.setattr(device.platform, "machine", lambda: machine)


@pytest.mark.parametrize(
    "text, machine, isa",
    [
        (
            SAPPHIRE_RAPIDS,
            "x86_64",
            [
                "amx",
                "amx_bf16",
                "amx_int8",
                "avx2",
                "avx512",
                "avx512_bf16",
                "avx512_fp16",
                "avx512_vnni",
                "f16c",
                "fma",
            ],
        ),
        (ZEN3, "x86_64", ["avx2", "f16c", "fma"]),  # no AVX-512, no VNNI: the CPU of issue 24's failing INT8 test
        (ORIN, "aarch64", ["dotprod", "fp16", "neon"]),
    ],
)
def test_cpu_isa_from_proc_cpuinfo(monkeypatch, text, machine, isa):
    _fake_proc(
        monkeypatch,
        text,
        machine,
        {"/proc/device-tree/model": "NVIDIA Jetson AGX Orin\x00"} if machine == "aarch64" else None,
    )
    info = device.cpu_info()
    assert info["isa"] == isa and info["machine"] == machine
    if machine == "x86_64":
        assert info["model"] in text and info["family"] in ("6", "25")
    else:
        assert info["board"] == "NVIDIA Jetson AGX Orin"


def test_gpu_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\nif [ -n \"$1\" ]; then echo 'NVIDIA H200, 9.0, 570.86.15, 143771, 00000000:19:00.0'; "
        "else echo '| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: 12.8     |'; fi\n"
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert device.gpu_info() == [
        {
            "name": "NVIDIA H200",
            "compute_capability": "9.0",
            "driver": "570.86.15",
            "cuda_driver_api": "12.8",
            "gpu_memory_mib": 143771,
            "pci_bus_id": "00000000:19:00.0",
        }
    ]


def test_fingerprint_key_follows_what_changes_results(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the suite may run capped (the AVX2 path)
    _fake_proc(monkeypatch, ZEN3, "x86_64")
    device._static.cache_clear()
    monkeypatch.setattr(device, "gpu_info", lambda: [])
    try:
        a = device.fingerprint()
        monkeypatch.setattr(device.platform, "node", lambda: "another-host")  # the host name is not in the key
        device._static.cache_clear()
        assert device.fingerprint()["key"] == a["key"]
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a capped ISA computes differently: another key
        b = device.fingerprint()
        assert b["key"] != a["key"] and b["env"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
        line = device.summary(b)
        assert line.startswith("AMD EPYC 7R13 Processor (x86_64") and "avx2 f16c fma" in line
        assert "no NVIDIA GPU" in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line and b["key"][:12] in line
    finally:
        device._static.cache_clear()


def test_the_record_needs_neither_torch_nor_psutil():
    code = (
        "import sys, runtime.device as d; r = d.fingerprint(); print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'psutil', 'onnxruntime', 'openvino')))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
