"""OpenVINO bundles of the motion model: built by ``make engine``'s code, held to ONNX Runtime's parity and runtime
tests, thread safety, the compiled-model cache, the one shared INT8 file, and the errors."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install -e './runtime[openvino]')")

from export.bundle.build import BuildError, BuildRequest, build_bundle, choose_backend
from runtime import BundleError, Engine
from runtime.backends.openvino_session import OpenVINOSession, choose_precision, validate_session
from tests.support.concurrency import run_in_threads


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory):
    """The compiled-model cache of every Engine in this module: a temporary folder, not the user's."""
    path = tmp_path_factory.mktemp("ov_model_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIMESFORMER_CACHE", str(path))
    yield path / "openvino"
    mp.undo()


@pytest.fixture(scope="module")
def ov_bundles(tmp_path_factory, motion_model_path, ov_cache) -> dict[str, Path]:
    """fp32, fp16 and int8 OpenVINO bundles of the motion model, through build_bundle with a temporary cache."""
    base = tmp_path_factory.mktemp("ov_engines")
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        req = BuildRequest(
            model=str(motion_model_path),
            precision=precision,
            backend="openvino",
            out=str(base / precision),
            cache_dir=str(base / "cache"),
            calib_clips=16,
            parity_clips=8,
            batch=(1, 2, 4),
            allow_precision_fallback=True,
        )  # fp16 runs f32 on AVX2-only CPUs
        out[precision] = build_bundle(req)
    out["cache"] = base / "cache"
    return out


@pytest.fixture(scope="module")
def ort_engine(fp32_bundle):
    with Engine(fp32_bundle) as e:
        yield e


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_bundle_manifest_and_parity(ov_bundles, precision):
    m = _manifest(ov_bundles[precision])
    assert m["backend"] == "openvino" and m["precision"] == precision and m["engine_file"] == "model.onnx"
    assert set(m["files"]) == {"model.onnx", "labels.txt", "reference.json", "reference.npz"}  # + the reference set
    assert m["parity"]["passed"] is True and not m["parity"]["failures"] and m["parity"]["clips"] == 8
    for key, limit in m["tolerance"].items():
        value = m["parity"][key]
        assert value <= limit if key.startswith("max_") else value >= limit, (key, value, limit)
    session = validate_session(m["session"])
    assert session["performance_hint"] == "LATENCY" and session["model_cache"] is True
    # FP32 must stay exact: f32 only, never OpenVINO's bf16 default on BF16 CPUs
    assert session["inference_precision"] == (["f32"] if precision == "fp32" else ["bf16", "f16", "f32"])


def test_int8_is_the_tensorrt_qdq_file(ov_bundles, motion_model_path):
    """One quantised file for every backend: the OpenVINO INT8 engine is the Q/DQ ONNX that the precision step makes
    for TensorRT (same cache, same calibration), with only its q/k/v projections split (export.onnx.qkv_split)."""
    import onnx

    from export.onnx.attention import resolve_attention
    from export.bundle.fp32_cache import cached_fp32_onnx
    from export.bundle.precision_step import precision_onnx
    from models import load_source
    from runtime.files import sha256_file

    m = _manifest(ov_bundles["int8"])
    portable = m["build"]["openvino"]["cpu_int8"]["form"] == "portable"
    assert m["calibration"]["target"] == "tensorrt" and "openvino" in m["calibration"]["shared_with"]
    assert ("tensorrt" in m["calibration"]["shared_with"]) is not portable
    net, labels, pre, source = load_source(str(motion_model_path))
    attention = resolve_attention("auto", "tensorrt", None, precision="int8")
    assert m["source"]["attention"] == attention
    fp32 = cached_fp32_onnx(net, labels, pre, source, attention, ov_bundles["cache"], verbose=False)
    # a CPU without VNNI builds its 7-bit weights from float: the same call with weight_bits 7
    seven = {"int8_options": {"weight_bits": 7}} if portable else {}
    trt_file, info = precision_onnx(
        fp32, "int8", "tensorrt", None, pre, 16, "max", ov_bundles["cache"], 0, form="qdq-fp16", progress=False, **seven
    )
    assert info["reused"] is True  # calibrated once: the TensorRT request found the OpenVINO build's file
    assert sha256_file(trt_file) == m["source"]["onnx_sha256"]
    from export.onnx.qkv_split import split_qkv_projections

    from calibration.precision.cpu_int8 import to_cpu_int8_form

    model = onnx.load(str(trt_file))
    assert split_qkv_projections(model) == m["build"]["openvino"]["qkv_split"] == 2 * 4  # 4 blocks, 2 attentions
    from calibration.precision.cpu_int8 import choose_cpu_int8_form

    cpu_int8 = m["build"]["openvino"]["cpu_int8"]  # issue 25: the form follows this CPU's INT8 instructions
    assert cpu_int8["form"] == choose_cpu_int8_form()[0] and cpu_int8["built_on"]
    rec = to_cpu_int8_form(model, cpu_int8["form"])  # portable: 7-bit weights, q·kᵀ and p·v in float
    assert cpu_int8["saturation_safe"] is (cpu_int8["form"] == "portable")
    assert cpu_int8["float_matmuls"] == rec["float_matmuls"]
    assert len(rec["float_matmuls"]) == (2 * 2 * 4 if cpu_int8["form"] == "portable" else 0)
    engine = (ov_bundles["int8"] / "model.onnx").read_bytes()
    assert engine == model.SerializeToString()  # byte for byte: the TensorRT file, re-laid out, in the CPU form
    ops = {n.op_type for n in onnx.load_from_string(engine).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


_CAPPED_RUN = r"""
import sys, numpy as np
from runtime import Engine
with Engine(sys.argv[1], cache_dir=False, verify_on_device=sys.argv[4] if len(sys.argv) > 4 else "once") as e:
    assert e.describe()["inference_precision"] == "f32", e.describe()
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], np.concatenate([e.infer(x[i:i + 4]) for i in range(0, len(x), 4)]))
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 INT8 paths")
def test_int8_bundle_same_numbers_without_vnni(ov_bundles, motion_model_path, tmp_path, monkeypatch):
    """The portable INT8 bundle (what ``make engine`` builds on a CPU without VNNI) computes the same logits on the
    AVX2-only INT8 path (16-bit saturating pair sums; oneDNN capped with ONEDNN_MAX_CPU_ISA=AVX2, which is that path
    on any x86) as on the VNNI path, and both stay within the cosine bar against PyTorch. A ``vnni`` bundle warns
    when it loads on the AVX2 path. The old bundle (8-bit weights, int8 q·kᵀ/p·v) moved by up to 0.39 in a
    logit and fell to min cosine 0.998 there (0.9963 on a real AMD Zen 3)."""
    import os
    import subprocess

    import torch

    from calibration.clips.calibset import load_clips
    from models import load_source

    from calibration.precision.cpu_int8 import FORM_ENV

    monkeypatch.setenv(FORM_ENV, "portable")
    bundle = build_bundle(
        BuildRequest(
            model=str(motion_model_path),
            precision="int8",
            backend="openvino",
            out=str(tmp_path / "portable"),
            cache_dir=str(ov_bundles["cache"]),
            calib_clips=16,
            parity_clips=8,
            batch=(1, 2, 4),
        )
    )
    assert _manifest(bundle)["build"]["openvino"]["cpu_int8"]["form"] == "portable"
    net, _, pre, _ = load_source(str(motion_model_path))
    x = load_clips("synthetic", pre, n=12, seed=7000)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x)
    outs = {}
    # VNNI where the CPU has it vs the AVX2 path; both caps leave out bf16, so both run f32 (as an AVX2-only CPU does)
    for cap in ("AVX512_CORE_VNNI", "AVX2"):
        env = {**{k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}, "ONEDNN_MAX_CPU_ISA": cap}
        out = tmp_path / f"y{cap}.npy"
        run = subprocess.run(
            [sys.executable, "-c", _CAPPED_RUN, str(bundle), str(tmp_path / "x.npy"), str(out)],
            env=env,
            cwd=str(Path(__file__).resolve().parents[2]),
            timeout=300,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, (cap, run.stderr[-2000:])
        outs[cap] = np.load(out)
    assert np.abs(outs["AVX512_CORE_VNNI"] - outs["AVX2"]).max() < 0.02  # old bundle: 0.18-0.39
    for y in outs.values():
        cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.999, cos.min()
    if _manifest(ov_bundles["int8"])["build"]["openvino"]["cpu_int8"]["form"] == "vnni":  # built for this VNNI CPU
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                _CAPPED_RUN,
                str(ov_bundles["int8"]),
                str(tmp_path / "x.npy"),
                str(tmp_path / "v.npy"),
                "never",
            ],
            env=env,
            cwd=str(Path(__file__).resolve().parents[2]),
            timeout=300,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0 and "saturate on this CPU" in run.stderr, run.stderr[-2000:]  # the load check


def test_fp32_logits_match_onnxruntime(ov_bundles, ort_engine):
    x = np.random.default_rng(1).standard_normal((3, 8, 3, 64, 64)).astype(np.float32)
    with Engine(ov_bundles["fp32"]) as e:
        assert e.describe()["inference_precision"] == "f32"
        got = e.infer(x)
    ref = ort_engine.infer(x)
    assert got.dtype == np.float32 and got.shape == ref.shape == (3, 8)
    assert np.abs(got - ref).max() < 2e-5


def test_reduced_precision_runs_what_the_cpu_has(ov_bundles):
    import openvino as ov

    from runtime.cpu_isa import openvino_capabilities

    # what the CPU offers, less what ONEDNN_MAX_CPU_ISA takes away (OpenVINO still lists BF16 under an AVX2 cap)
    caps = openvino_capabilities(list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
    want = "bf16" if "BF16" in caps else "f16" if "FP16" in caps else "f32"
    for precision in ("fp16", "int8"):
        with Engine(ov_bundles[precision]) as e:
            assert e.describe()["inference_precision"] == want
    s = OpenVINOSession(inference_precision=("bf16", "f16", "f32"))
    assert choose_precision(s, ["FP32", "INT8"]) == "f32"
    assert choose_precision(s, ["FP16", "FP32"]) == "f16"
    assert choose_precision(s, ["BF16", "FP16"]) == "bf16"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_predict_on_heldout_videos_equals_onnxruntime(ov_bundles, ort_engine, heldout_videos, precision):
    from calibration.clips.video_reader import decode_frames

    correct = 0
    with Engine(ov_bundles[precision]) as e:
        for path, label in heldout_videos:
            frames = decode_frames(path)
            got, ref = e.predict(frames), ort_engine.predict(frames)
            assert got.index == ref.index, f"{path.name}: OpenVINO {precision} {got.label} vs ONNX Runtime {ref.label}"
            assert got.label == e.labels[got.index]
            correct += got.index == label
    assert correct / len(heldout_videos) >= 0.9


def test_stream_on_openvino(ov_bundles, heldout_videos):
    from runtime.video_source import iter_frames

    path, label = heldout_videos[5]
    with Engine(ov_bundles["int8"]) as e:
        stream = e.stream(every=e.preprocess.sampling_rate)
        preds = [p for p in (stream.push(f) for f in iter_frames(path)) if p is not None]
    assert preds and sum(p.index == label for p in preds) / len(preds) >= 0.5


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_one_engine_shared_by_8_threads_is_bit_exact(ov_bundles, precision):
    with Engine(ov_bundles[precision]) as e:
        rng = np.random.default_rng(7)
        clips = rng.standard_normal((16, 1) + e.clip_shape).astype(np.float32)
        expected = [e.infer(c) for c in clips]
        results: dict[int, np.ndarray] = {}

        def work(t: int) -> None:
            for i in range(t, len(clips), 8):
                results[i] = e.infer(clips[i])

        errors = run_in_threads(work, 8)
    assert not errors, errors
    for i, ref in enumerate(expected):
        assert np.array_equal(results[i], ref), f"clip {i}: concurrent result differs from the sequential one"


def test_compiled_model_cache_is_used_on_second_load(ov_bundles, tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 8, 3, 64, 64)).astype(np.float32)
    cache = tmp_path / "cache"
    with Engine(ov_bundles["int8"], cache_dir=cache) as first:
        d1, y1 = first.describe(), first.infer(x)
    assert d1["loaded_from_cache"] is False
    blob = Path(d1["model_cache"])
    sha = _manifest(ov_bundles["int8"])["files"]["model.onnx"]["sha256"]
    assert blob.is_file() and blob.parent == cache / sha and blob.stat().st_size > 0
    with Engine(ov_bundles["int8"], cache_dir=cache) as second:
        d2, y2 = second.describe(), second.infer(x)
    assert d2["loaded_from_cache"] is True and np.array_equal(y1, y2)
    blob.write_bytes(b"truncated")  # a damaged cache entry: compiled again, replaced, same answers
    with Engine(ov_bundles["int8"], cache_dir=cache) as third:
        assert third.describe()["loaded_from_cache"] is False and np.array_equal(third.infer(x), y1)
    assert blob.stat().st_size > 100
    with Engine(ov_bundles["int8"], cache_dir=False) as uncached:
        assert uncached.describe()["model_cache"] is None and np.array_equal(uncached.infer(x), y1)


def test_cache_never_inside_the_bundle(ov_bundles):
    with pytest.raises(BundleError, match="inside the bundle"):
        Engine(ov_bundles["fp32"], cache_dir=ov_bundles["fp32"] / "cache")
    assert not (ov_bundles["fp32"] / "cache").exists()


def test_session_errors_name_the_field():
    with pytest.raises(BundleError, match=r"session\.inference_precision: 'fp8' is not one of"):
        validate_session({"inference_precision": ["fp8"]})
    with pytest.raises(BundleError, match=r"session\.performance_hint: expected one of"):
        validate_session({"performance_hint": "FAST"})
    with pytest.raises(BundleError, match=r"session\.num_threads: expected an integer >= 0"):
        validate_session({"num_threads": -1})
    with pytest.raises(BundleError, match=r"session: unknown keys \['providers'\]"):
        validate_session({"providers": ["CPUExecutionProvider"]})
    assert validate_session({})["inference_precision"] == ["f32"]


def test_clear_errors_without_openvino_and_for_a_bad_device(ov_bundles, monkeypatch):
    with pytest.raises(ValueError, match=r"device: OpenVINO .* not 'NPU'"):
        Engine(ov_bundles["fp32"], device="npu")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(RuntimeError, match=r"this bundle needs OpenVINO.*pip install"):
        Engine(ov_bundles["fp32"])
    with pytest.raises(BuildError, match=r"BACKEND=openvino, but OpenVINO not usable.*runtime\[openvino\]"):
        choose_backend("openvino")


def test_backend_choice_says_why():
    backend, why = choose_backend("openvino")
    assert backend == "openvino" and why.startswith("asked for; OpenVINO ")
    import platform

    backend, why = choose_backend("auto")
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert backend == "openvino" and "TensorRT not usable here" in why and "faster than ONNX Runtime" in why
        from runtime.cpu_isa import cpu_isa

        assert f"this CPU is {cpu_isa().describe()}" in why  # issue 25: the reason names the ISA
    else:
        assert backend == "onnxruntime"


def test_bench_cpu_quick_report(ov_bundles, tmp_path, capsys):
    """``make bench-cpu``'s report on the motion model (--quick; the FP32 exports and the Q/DQ calibration come from
    the bundles above through the shared cache): every row, accuracy against PyTorch, ratios, peaks, files."""
    from export.bench import cpu as bench_cpu

    out = tmp_path / "bench"
    rc = bench_cpu.main(
        [
            "--quick",
            "--rounds",
            "2",
            "--eval-clips",
            "3",
            "--threads",
            "2",
            "--cache-dir",
            str(ov_bundles["cache"]),
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "cpu.json").read_text())
    rows = report["results"]
    anchors = {"pytorch-fp32", "pytorch-bf16", "transformers-ort-fp32"}
    ours = {"ort-fp32", "ort-int8-dynamic", "ort-int8-qdq", "ov-fp32", "ov-fp16", "ov-int8"}
    assert anchors | ours <= set(rows)
    assert {"gemm-fp32-torch", "gemm-bf16-torch"} <= set(rows) and {"fp32", "bf16"} <= set(report["peak_gflops"])
    assert report["gflop_per_clip"] == pytest.approx(0.7015, rel=1e-3)  # models.count_flops of motion_8x64
    for name in anchors | ours:
        r = rows[name]
        assert len(r["runs_s"]) == 2 and r["min_s"] <= r["median_s"] and r["gflops"] > 0
        assert len(r["cosines"]) == 3 and r["accuracy"]["clips"] == 3
        assert r["accuracy"]["min_cosine"] > 0.999, (name, r["accuracy"])  # every engine computes the model
        assert r["ratio_median_vs_ort_fp32"] == pytest.approx(r["median_s"] / rows["ort-fp32"]["median_s"])
        # two rounds are too few to claim a ratio (at least 3, within the spread tolerance): reported, not claimed
        assert r["ratio_vs_ort_fp32"] is None and "2 round(s), at least 3 needed" in r["ratio_reason"]
    assert rows["pytorch-fp32"]["accuracy"]["max_abs_logit"] == 0.0  # the reference against itself
    assert rows["ov-fp32"]["accuracy"]["max_abs_logit"] < 1e-4  # FP32 stays FP32 on OpenVINO
    assert set(report["targets"]) == {"ov-int8", "ov-fp16"}
    assert all(d["second_from_cache"] and not d["first_from_cache"] for d in report["load"].values())
    md = (out / "cpu.md").read_text()
    assert capsys.readouterr().out.strip() == md.strip()  # the report is also printed
    for name in anchors | ours:
        assert f"| {name} |" in md
    assert "Targets (issue 18" in md and "first load" in md
    assert all(t["passed"] is None for t in report["targets"].values()) and "**not judged**" in md
    assert (out / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
