"""TensorRT builds and the TensorRT backend on the fakes of ``tests/support/fake_tensorrt.py`` (no GPU needed): the
call sequence, flags, layer pinning, timing cache, asynchronous execution, CUDA graphs, memory release, and
bundles built through the real ``export.bundle.build.build_bundle`` for each TensorRT option, read back by
``runtime.Engine``. Also the paths without TensorRT, and ``make gpu-check``'s refusal without a GPU."""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support.fake_tensorrt import CLIP, FakeCudart, install, make_models, opts
from tests.support.fake_tensorrt import backend_manifest as _manifest, run_ort as _ort

from export.tensorrt.build import TensorRTBuildError, build_engine
from export.tensorrt.plan import plan_build
from runtime.backends.tensorrt_backend import (
    CudaError,
    TensorRTBackend,
    TensorRTBackendError,
    check_plan_compatibility,
    cuda_call,
    cuda_check,
)
from runtime.backends.tensorrt_detect import tensorrt_available

ROOT = Path(__file__).resolve().parents[2]


def _trt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - the stub packages raise OSError too
        return False
    return True


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("trt_models"))


@pytest.fixture
def fake_gpu(monkeypatch):
    """Install the fake tensorrt/cuda-python; returns a factory taking the TensorRT version to fake."""
    pytest.importorskip("onnxruntime")
    cuda = FakeCudart()

    def make(version: str = "10.3.0", **kw):
        return install(monkeypatch, cuda, version, **kw), cuda

    return make


@pytest.mark.skipif(_trt_importable(), reason="tensorrt is importable here: the missing-TensorRT path cannot run")
def test_build_engine_without_tensorrt_says_how_to_get_it(models, tmp_path):
    with pytest.raises(TensorRTBuildError) as e:
        build_engine(models["fp32"], tmp_path / "model.plan", opts())
    assert "tensorrt-cu12" in str(e.value) and "JetPack" in str(e.value) and "BACKEND=onnxruntime" in str(e.value)
    assert not (tmp_path / "model.plan").exists()
    ok, reason = tensorrt_available()
    assert ok is False and "tensorrt" in reason
    with pytest.raises(TensorRTBuildError, match="pass trt_version"):
        plan_build(models["fp32"], opts())


@pytest.mark.skipif(_trt_importable(), reason="tensorrt is importable here: the missing-TensorRT path cannot run")
def test_backend_without_tensorrt_says_how_to_get_it(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(TensorRTBackendError, match=r"tensorrt-cu12.*BACKEND=onnxruntime"):
        TensorRTBackend(plan, {"backend": "tensorrt", "backend_version": "10.3.0"})


def test_tensorrt_available_contract():
    ok, reason = tensorrt_available()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason


# ------------------------------------------------------------------------------ backend, no GPU


def test_backend_imports_only_runtime_side():
    import runtime.backends.tensorrt_backend as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & {"torch", "models", "export", "onnx", "onnxruntime", "pycuda"}, roots
    assert TensorRTBackend.thread_safe is False and TensorRTBackend.name == "tensorrt"


def test_plan_compatibility_check(tmp_path):
    plan = tmp_path / "model.plan"
    check_plan_compatibility(plan, "10.3.0", "10.3.0.26")
    check_plan_compatibility(plan, "10.3.0", "10.3.1")  # same major.minor
    with pytest.raises(TensorRTBackendError) as e:
        check_plan_compatibility(plan, "10.3.0", "10.14.1")
    assert "model.plan" in str(e.value) and "10.3.0" in str(e.value) and "10.14.1" in str(e.value)
    check_plan_compatibility(plan, "10.3.0", "10.14.1", version_compatible=True)
    check_plan_compatibility(plan, "10.14.1", "11.0.0", version_compatible=True)  # 10 -> 11 documented
    with pytest.raises(TensorRTBackendError, match="same or a newer"):
        check_plan_compatibility(plan, "10.14.1", "10.3.0", version_compatible=True)
    with pytest.raises(TensorRTBackendError, match="same or a newer"):
        check_plan_compatibility(plan, "8.6.1", "11.0.0", version_compatible=True)
    check_plan_compatibility(plan, None, "10.3.0")  # unknown: left to deserialisation


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


def test_cuda_check_helper():
    fake = SimpleNamespace(
        cudaGetErrorString=lambda err: (_Err.cudaSuccess, b"out of memory"),
        cudaMalloc=lambda n: (_Err.cudaErrorMemoryAllocation, None),
    )
    assert cuda_check(fake, "cudaMalloc", (_Err.cudaSuccess, 1234)) == 1234
    assert cuda_check(fake, "cudaStreamSynchronize", (_Err.cudaSuccess,)) is None
    assert cuda_check(fake, "cudaX", (_Err.cudaSuccess, 1, 2)) == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation \(2\): out of memory"):
        cuda_call(fake, "cudaMalloc", 64)


def test_cuda_call_with_real_cuda_python_without_gpu():
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python not installed")
    from runtime.backends.tensorrt_backend import import_cudart

    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0 and count:
        pytest.skip("a CUDA GPU is visible: the no-GPU error path cannot run")
    with pytest.raises(CudaError, match="cudaGetDeviceCount failed: cudaError"):
        cuda_call(cudart, "cudaGetDeviceCount")


# ---------------------------------------------------------------------- with TensorRT and a GPU


# ---------------------------------------------------------------- fakes


def test_fake_build_weak_fp16_trt10(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.3.0")
    cache = tmp_path / "cache" / "timing.cache"
    o = opts(
        precision="fp16",
        strongly_typed=False,
        timing_cache=str(cache),
        workspace_mib=256,
        builder_optimization_level=4,
        hardware_compatibility="ampere_plus",
        tf32=False,
    )
    info = build_engine(models["fp32"], tmp_path / "out" / "model.plan", o, progress=True)
    b = trt.builds[-1]
    assert b.network.flags == 0  # weakly typed, and no EXPLICIT_BATCH on 10
    assert b.config.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    norm = [layer for layer in b.network.layers if layer.type.name == "NORMALIZATION"]
    assert type(norm[0]) is trt.INormalizationLayer and norm[0].compute_precision == "float32"  # cast, then set
    assert trt.BuilderFlag.TF32 not in b.config.flags  # cleared: the fake's config starts with it, as TensorRT's
    assert b.config.pools == {trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert b.config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert b.config.builder_optimization_level == 4
    assert b.config.progress_monitor is not None
    assert b.config.profiles[0].shapes == {"video": ((1, *CLIP), (2, *CLIP), (4, *CLIP))}
    pinned = [layer for layer in b.network.layers if layer.precision == "float32"]
    assert [layer.type.name for layer in pinned] == ["NORMALIZATION", "SOFTMAX"]
    assert all(layer.output_types == {0: "float32"} for layer in pinned)
    assert info["fp32_pinned_layers"] == 2 and info["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    plan = tmp_path / "out" / "model.plan"
    assert info["plan_bytes"] == plan.stat().st_size
    assert info["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert sorted(p.name for p in plan.parent.iterdir()) == ["model.plan"]  # no temp files left
    assert cache.read_bytes() == b"+timed" and info["timing_cache"] == {
        "path": str(cache),
        "loaded": False,
        "saved": True,
    }
    info2 = build_engine(models["fp32"], plan, o, progress=False)
    assert info2["timing_cache"]["loaded"] is True and cache.read_bytes() == b"+timed+timed"
    assert trt.builds[-1].config.progress_monitor is None


def test_fake_build_strongly_typed_trt10_and_trt11(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.14.1")
    build_engine(models["int8"], tmp_path / "a.plan", opts(precision="int8", version_compatible=True), progress=False)
    b = trt.builds[-1]
    assert b.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert b.config.flags == {trt.BuilderFlag.VERSION_COMPATIBLE}
    assert not any(layer.precision for layer in b.network.layers)
    trt, _ = fake_gpu("11.0.0")  # no FP16/INT8/OBEY flags at all in this fake, as in TensorRT 11
    info = build_engine(models["fp16"], tmp_path / "b.plan", opts(precision="fp16"), progress=False)
    assert trt.builds[-1].network.flags == 0 and trt.builds[-1].config.flags == set()
    assert info["trt_version"] == "11.0.0" and info["creation_flags"] == []


def test_fake_build_dla(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.3.0")
    dla = {"precision": "fp16", "strongly_typed": False, "dla_core": 1, "batch": (2, 2, 2)}
    build_engine(models["fp32"], tmp_path / "m.plan", opts(**dla), progress=False)
    c = trt.builds[-1].config
    assert c.default_device_type == trt.DeviceType.DLA and c.DLA_core == 1
    assert trt.BuilderFlag.GPU_FALLBACK in c.flags
    assert c.profiles[0].shapes["video"] == ((2, *CLIP),) * 3  # DLA: min = opt = max
    trt.Builder.num_DLA_cores = 1  # the test double's device now reports one DLA core (Builder.num_DLA_cores)
    with pytest.raises(TensorRTBuildError, match=r"dla_core=1, but this device has 1 DLA core\(s\); expected 0\.\.0"):
        build_engine(models["fp32"], tmp_path / "m.plan", opts(**dla), progress=False)


def test_dla_dynamic_batch_is_refused_by_the_plan_and_by_the_fake_builder(models, tmp_path, fake_gpu, monkeypatch):
    import export.tensorrt.build as tb
    from export.tensorrt.plan import plan_request

    trt, _ = fake_gpu("10.3.0")
    dla = {"precision": "fp16", "strongly_typed": False, "dla_core": 0}
    with pytest.raises(
        TensorRTBuildError,
        match=r"dla_core=0 with batch \(1, 2, 4\): DLA runs static shapes only.*"
        r"--batch 2:2:2",
    ):
        build_engine(models["fp32"], tmp_path / "m.plan", opts(**dla), progress=False)
    assert not trt.builds
    # past the plan, the test double refuses a dynamic DLA profile as TensorRT does (NvInfer.h: min = opt = max)
    monkeypatch.setattr(
        tb,
        "plan_build",
        lambda onnx, o, trt_version: dataclasses.replace(
            plan_request(dataclasses.replace(o, batch=(2, 2, 2)), trt_version),
            profile={"input": "video", "min": (1, *CLIP), "opt": (2, *CLIP), "max": (4, *CLIP)},
            onnx={"sha256": "x"},
        ),
    )
    with pytest.raises(
        TensorRTBuildError,
        match=r"(?s)failed to build.*DLA requires the optimization profile's min, "
        r"opt and max dimensions to be equal",
    ):
        build_engine(models["fp32"], tmp_path / "m.plan", opts(**dla), progress=False)


def test_fake_build_other_gpus_timing_cache_is_refused_and_replaced(models, tmp_path, fake_gpu):
    fake_gpu("10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OTHER-GPU cache")  # set_timing_cache returns False for it, as TensorRT does
    info = build_engine(models["fp32"], tmp_path / "m.plan", opts(timing_cache=str(cache)), progress=False)
    assert info["timing_cache"] == {"path": str(cache), "loaded": False, "saved": True}
    assert any("made by another TensorRT/GPU" in w for w in info["warnings"]) and cache.read_bytes() == b"+timed"


def test_fake_build_fp32_attention_operator_finds_no_kernel(models, tmp_path, fake_gpu, monkeypatch):
    import export.tensorrt.build as tb
    from export.tensorrt.plan import plan_request

    fake_gpu("10.14.1")
    # plan_build refuses this combination first; bypass it to show what the builder itself would do
    monkeypatch.setattr(
        tb,
        "plan_build",
        lambda onnx, o, trt_version: dataclasses.replace(
            plan_request(o, trt_version),
            profile={"input": "video", "min": (1, *CLIP), "opt": (2, *CLIP), "max": (4, *CLIP)},
            onnx={"sha256": "x"},
        ),
    )
    with pytest.raises(
        TensorRTBuildError,
        match=r"(?s)failed to build the engine.*blocks.0.attn: could not find any "
        r"implementation for the non-decomposable IAttention in FP32",
    ):
        build_engine(models["attention"], tmp_path / "m.plan", opts(attention_fallback=False), progress=False)
    monkeypatch.undo()
    fake_gpu("10.3.0")
    with pytest.raises(TensorRTBuildError, match="attention.onnx: node 'blocks.0.attn'"):
        build_engine(models["attention"], tmp_path / "m.plan", opts(), progress=False)


def test_fake_build_unreadable_timing_cache_starts_empty(models, tmp_path, fake_gpu, monkeypatch):
    trt, _ = fake_gpu("10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"corrupt")
    config_cls = type(trt.Builder(None).create_builder_config())
    real = config_cls.create_timing_cache
    # the test double returns no cache for an unreadable blob, as IBuilderConfig.create_timing_cache may
    monkeypatch.setattr(
        config_cls, "create_timing_cache", lambda self, blob: None if blob == b"corrupt" else real(self, blob)
    )
    info = build_engine(models["fp32"], tmp_path / "m.plan", opts(timing_cache=str(cache)), progress=False)
    assert info["timing_cache"] == {"path": str(cache), "loaded": False, "saved": True}
    assert any("timing cache unreadable" in w for w in info["warnings"]) and cache.read_bytes() == b"+timed"


def test_fake_build_parser_errors_are_listed(models, tmp_path, fake_gpu):
    fake_gpu("10.3.0", fail_parse=True)
    with pytest.raises(
        TensorRTBuildError,
        match=r"(?s)fp32.onnx: TensorRT 10.3.0's ONNX parser failed.*"
        r"node 'fused_gelu' \(Gelu\): Unsupported operator",
    ):
        build_engine(models["fp32"], tmp_path / "m.plan", opts(), progress=False)
    assert not (tmp_path / "m.plan").exists()


def test_fake_tensorrt_available(fake_gpu):
    fake_gpu("10.3.0")
    ok, reason = tensorrt_available()
    assert ok is True and "TensorRT 10.3.0" in reason and "1 CUDA device" in reason


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fake_backend_runs_and_frees_everything(models, tmp_path, fake_gpu, cuda_graph):
    trt, cuda = fake_gpu("10.3.0")
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    manifest = _manifest(info, "fp32")
    backend = TensorRTBackend(tmp_path / "model.plan", manifest, device="cuda:0", cuda_graph=cuda_graph)
    engine = trt.runtimes[-1].engine
    assert trt.runtimes[-1].engine_host_code_allowed is False
    # two pinned staging buffers; on the device the two I/O buffers and one activation block for every context
    assert len(cuda.host) == 2 and len(cuda.device) == 3 and len(cuda.streams) == 1
    rng = np.random.default_rng(4)
    for batch in (3, 3, 1, 4, 3):
        x = rng.standard_normal((batch, *CLIP)).astype(np.float32)
        np.testing.assert_allclose(backend.infer(x), _ort(models["fp32"], x), rtol=1e-6, atol=1e-6)
    d = backend.describe()
    assert d["device_name"] == "Fake GPU" and d["built_with"] == "10.3.0" and d["batch_range"] == [1, 4]
    if cuda_graph:
        assert d["graphs_captured"] == [1, 3, 4]
        assert cuda.launches == 2  # the two repeat calls at batch 3 replayed the graph
        assert engine.contexts == 4  # the main one plus one per captured batch size
        assert engine.executions == 3  # warm-ups only
    else:
        assert cuda.launches == 0 and engine.executions == 5 and engine.contexts == 1
    with pytest.raises(TensorRTBackendError, match=r"shape \(2, 2, 3, 8, 9\) outside the plan's profile"):
        backend.infer(np.zeros((2, 2, 3, 8, 9), np.float32))
    backend.close()
    assert not cuda.host and not cuda.device and not cuda.streams and not cuda.graphs and not cuda.execs
    backend.close()


def test_fake_backend_version_checks(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.3.0")
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    manifest = _manifest(info, "fp32")
    manifest["backend_version"] = "10.14.1"
    with pytest.raises(
        TensorRTBackendError,
        match=r"model\.plan: built with TensorRT 10\.14\.1, but TensorRT "
        r"10\.3\.0 is installed",
    ):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    manifest["backend_version"] = "10.1.0"
    manifest["session"] = {"version_compatible": True}
    backend = TensorRTBackend(tmp_path / "model.plan", manifest)
    assert trt.runtimes[-1].engine_host_code_allowed is True
    backend.close()
    (tmp_path / "junk.plan").write_bytes(b"\0" * 64)
    with pytest.raises(
        TensorRTBackendError,
        match=r"junk\.plan: TensorRT 10\.3\.0 could not deserialize the plan "
        r"\(built with TensorRT 10\.3\.0",
    ):
        TensorRTBackend(tmp_path / "junk.plan", _manifest(info, "fp32"))
    manifest = _manifest(info, "fp32")
    manifest["input"]["name"] = "frames"
    with pytest.raises(TensorRTBackendError, match="manifest's input is 'frames', the plan's is 'video'"):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    manifest = _manifest(info, "fp32")
    manifest["input"]["batch"]["max"] = 8
    with pytest.raises(TensorRTBackendError, match=r"batch range .* exceeds the plan's profile batch 1\.\.4"):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    with pytest.raises(TensorRTBackendError, match="device 'cpu' not supported"):
        TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp32"), device="cpu")


# ------------------------------------------------- bundles through the real build_bundle, on the fakes


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trt_bundles")


@pytest.mark.parametrize(
    ("version", "request_kw", "session"),
    [
        ("10.3.0", {"version_compatible": True}, {"version_compatible": True, "builder_flags": ["VERSION_COMPATIBLE"]}),
        (
            "10.14.1",
            {"hardware_compatibility": "same_compute_capability"},
            {"hardware_compatibility": "same_compute_capability"},
        ),
        (
            "10.3.0",
            {"precision": "fp16", "strongly_typed": False, "dla_core": 0, "batch": (2, 2, 2)},
            {
                "strongly_typed": False,
                "dla_core": 0,
                "builder_flags": ["FP16", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"],
            },
        ),
        (
            "10.3.0",
            {"precision": "fp16", "strongly_typed": False},
            {"strongly_typed": False, "builder_flags": ["FP16", "OBEY_PRECISION_CONSTRAINTS"]},
        ),
        ("11.4.0", {"cuda_graph": True}, {"cuda_graph": True}),
        ("10.3.0", {"tf32": True}, {"builder_flags": ["TF32"]}),
    ],
    ids=["version-compatible", "hardware-compatible", "dla", "builder-flags", "cuda-graph", "tf32"],
)
def test_bundle_round_trip_through_build_bundle(motion_model_path, bundle_dir, fake_gpu, version, request_kw, session):
    from export.bundle.build import BuildRequest, build_bundle
    from runtime import Engine
    from runtime.backends.tensorrt_session import TensorRTSession, validate_session

    trt, cuda = fake_gpu(version)
    name = "-".join(f"{k}" for k in request_kw if k != "batch")
    req = BuildRequest(
        model=str(motion_model_path),
        backend="tensorrt",
        out=str(bundle_dir / name),
        cache_dir=str(bundle_dir / "cache"),
        parity_clips=2,
        **{"batch": (1, 2, 4), **request_kw},
    )
    out = build_bundle(req)
    m = json.loads((out / "manifest.json").read_text())
    assert m["backend"] == "tensorrt" and m["backend_version"] == version and m["engine_file"] == "model.plan"
    assert validate_session(m["session"]) == m["session"]  # the builder writes exactly the one schema
    expected = {**TensorRTSession().to_dict(), **session}
    assert m["session"] == expected
    assert m["build"]["tensorrt"]["plan_sha256"] and m["parity"]["passed"] is True
    tf32 = bool(request_kw.get("tf32"))  # FP32 is strict unless TF32 is asked for; TF32 has its own tolerance
    assert m["build"]["tensorrt"]["tf32"] is tf32 and (trt.BuilderFlag.TF32 in trt.builds[-1].config.flags) is tf32
    if tf32:
        from export.tensorrt.plan import TF32_TOLERANCE

        assert m["tolerance"] == TF32_TOLERANCE
    assert m["source"]["attention"] == "decomposed"  # fp32 and the builder-flag path never get the Attention op
    built = trt.builds[-1].config
    if request_kw.get("dla_core") is not None:
        assert built.default_device_type == trt.DeviceType.DLA and built.DLA_core == 0
        assert m["build"]["tensorrt"]["onnx_precision"] == "fp32"  # FP32 ONNX + BuilderFlag.FP16
    if "hardware_compatibility" in request_kw:
        assert built.hardware_compatibility_level == trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    with Engine(out) as engine:  # the backend reads the same schema back
        backend = engine.backend
        rt = trt.runtimes[-1]
        assert backend.session == TensorRTSession.from_dict(m["session"])
        assert rt.engine_host_code_allowed is bool(session.get("version_compatible"))
        assert rt.DLA_core == session.get("dla_core", -1)
        assert backend.cuda_graph is bool(session.get("cuda_graph"))
        n = min(3, engine.batch_range[1])  # a DLA plan has a static batch (2)
        x = np.random.default_rng(0).standard_normal((n, *engine.clip_shape)).astype(np.float32)
        y = engine.infer(x)
        assert y.shape == (n, 8) and np.isfinite(y).all()
        if session.get("cuda_graph"):
            assert backend.describe()["graphs_captured"] == [1, 2, 3, 4] or 3 in backend.describe()["graphs_captured"]


def test_make_gpu_check_without_tensorrt_says_what_is_missing(tmp_path):
    if _trt_importable():
        pytest.skip("tensorrt imports here: the refusal path cannot run")
    r = subprocess.run(
        [sys.executable, "-m", "export.tensorrt.gpu_check", "--out", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "make gpu-check: missing:" in r.stderr and "tensorrt is not importable" in r.stderr
    assert "tensorrt-cu12" in r.stderr and not (tmp_path / "r.json").exists()
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "gpu-check"],
        cwd=ROOT,
        env=_outside_make(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert make.returncode == 0 and "export.tensorrt.gpu_check" in make.stdout


# ------------------------------------------------- issue 23: handles, TF32, memory, attention forms


@pytest.mark.parametrize("native_handle", [False, True], ids=["int(stream)", "get_cuda_native_handle"])
def test_execute_gets_the_raw_cudaStream_t_not_the_wrappers_address(
    models, tmp_path, fake_gpu, monkeypatch, native_handle
):
    from runtime.backends.tensorrt_detect import stream_handle

    trt, cuda = fake_gpu("10.3.0", native_handle=native_handle)
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    backend = TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp32"), cuda_graph=True)
    try:
        s = backend._stream
        assert stream_handle(s) == int(s) in cuda.streams and s.getPtr() not in cuda.streams  # as cuda-bindings
        x = np.random.default_rng(5).standard_normal((2, *CLIP)).astype(np.float32)
        for _ in range(2):  # the warm-up + capture, then the graph replay
            np.testing.assert_allclose(backend.infer(x), _ort(models["fp32"], x), rtol=1e-6, atol=1e-6)
        assert not trt.runtimes[-1].engine.errors and cuda.launches == 1
    finally:
        backend.close()


def test_fp32_is_strict_fp32_and_tf32_is_a_choice(models, tmp_path, fake_gpu):
    from export.tensorrt.plan import TF32_TOLERANCE

    trt, _ = fake_gpu("10.3.0")
    info = build_engine(models["fp32"], tmp_path / "a.plan", opts(), progress=False)
    assert trt.BuilderFlag.TF32 not in trt.builds[-1].config.flags  # TensorRT's default cleared
    assert info["tf32"] is False and info["cleared_builder_flags"] == ["TF32"] and info["parity_tolerance"] is None
    info = build_engine(models["fp32"], tmp_path / "b.plan", opts(tf32=True), progress=False)
    assert trt.BuilderFlag.TF32 in trt.builds[-1].config.flags
    assert info["tf32"] is True and "TF32" in info["session"]["builder_flags"]
    assert info["parity_tolerance"] == TF32_TOLERANCE and TF32_TOLERANCE["max_abs_logit"] > 1e-3


def test_cuda_graphs_share_one_activation_block(models, tmp_path, fake_gpu):
    from tests.support.fake_tensorrt.runtime import ACTIVATION_BYTES_PER_CLIP

    trt, cuda = fake_gpu("10.3.0")
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    backend = TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp32"), cuda_graph=True)
    try:
        free0 = cuda.cudaMemGetInfo()[1]
        rng = np.random.default_rng(6)
        for batch in (1, 3, 4, 2):
            x = rng.standard_normal((batch, *CLIP)).astype(np.float32)
            np.testing.assert_allclose(backend.infer(x), _ort(models["fp32"], x), rtol=1e-6, atol=1e-6)
        d = backend.describe()
        assert d["graphs_captured"] == [1, 2, 3, 4] and trt.runtimes[-1].engine.contexts == 5
        # four captured batch sizes and the main context: one activation block between them all
        assert cuda.cudaMemGetInfo()[1] == free0
        assert d["device_memory"] == {
            "activation_bytes": 4 * ACTIVATION_BYTES_PER_CLIP,
            "shared_by_contexts": 5,
            "io_bytes": 4 * int(np.prod(CLIP)) * 4 + 4 * 5 * 4,
        }
    finally:
        backend.close()
    assert not cuda.device


def test_fp16_decomposed_attention_is_handed_over_fusable(models, tmp_path, fake_gpu):
    import onnx

    from export.tensorrt.fp16_attention import find_attention_softmaxes, rewrite

    model = onnx.load(str(models["decomposed_fp16"]))
    assert [sm.name for _, sm, _ in find_attention_softmaxes(model)] == ["attn.softmax"]  # not the classifier's
    assert rewrite(model) == ["attn.softmax"]
    onnx.checker.check_model(model, full_check=True)
    producer = {o: n for n in model.graph.node for o in n.output}
    sm = next(n for n in model.graph.node if n.name == "attn.softmax")
    assert producer[sm.input[0]].name == "attn.qk"  # MatMul -> Softmax -> MatMul, no Cast between
    assert [n.name for n in model.graph.node if sm.output[0] in n.input] == ["attn.pv"]
    assert (
        "cls_softmax" in [n.name for n in model.graph.node]
        and len([n for n in model.graph.node if n.op_type == "Cast"]) == 4
    )  # 6 before: the attention's two went
    x = np.random.default_rng(7).standard_normal((3, *CLIP)).astype(np.float32)
    import onnxruntime as ort

    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"video": x})[0]
    np.testing.assert_allclose(y, _ort(models["decomposed_fp16"], x), atol=2e-3)

    shuffled = onnx.load(str(models["decomposed_fp16"]))  # as ONNX Runtime's FP16 converter leaves it: the input
    first = shuffled.graph.node[0]  # cast appended last, not in topological order
    shuffled.graph.node.remove(first)
    shuffled.graph.node.append(first)
    onnx.save(shuffled, str(tmp_path / "shuffled.onnx"))
    from export.tensorrt.fp16_attention import rewrite_file

    assert rewrite_file(tmp_path / "shuffled.onnx", tmp_path / "sorted.onnx")["fp16_softmax"] == 1
    for p in ("shuffled.onnx", "sorted.onnx"):
        (tmp_path / p).unlink()

    trt, _ = fake_gpu("10.3.0")
    info = build_engine(models["decomposed_fp16"], tmp_path / "m.plan", opts(precision="fp16"), progress=False)
    layers = [layer.name for layer in trt.builds[-1].network.layers]
    assert "attn.softmax_in_fp32" not in layers and "attn.softmax_out_fp16" not in layers
    assert info["attention_softmax"] == {"fp16_softmax": 1, "nodes": ["attn.softmax"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan"]  # the rewritten ONNX is gone


def test_attention_without_a_fused_kernel_falls_back_to_decomposable(models, tmp_path, fake_gpu):
    trt, _ = fake_gpu("10.14.1", no_fused_attention=True)
    info = build_engine(models["attention_fp16"], tmp_path / "m.plan", opts(precision="fp16"), progress=False)
    fb = info["attention_fallback"]
    assert fb["decomposable_attentions"] == 1 and "no fused attention kernel" in fb["why"][0]
    assert all(a.decomposable for a in trt.builds[-1].network.attentions)
    assert any("rebuilt with 1 decomposable IAttention" in w for w in info["warnings"])
    assert "decomposable" in info["build_plan"]["attention_fallback"]
    with pytest.raises(TensorRTBuildError, match="no fused attention kernel for this GPU"):
        build_engine(
            models["attention_fp16"],
            tmp_path / "n.plan",
            opts(precision="fp16", attention_fallback=False),
            progress=False,
        )
    trt, _ = fake_gpu("10.14.1")  # a GPU with the kernel: no fallback
    info = build_engine(models["attention_fp16"], tmp_path / "m.plan", opts(precision="fp16"), progress=False)
    assert info["attention_fallback"] is None and not trt.builds[-1].network.attentions[0].decomposable


# ------------------------------------------------------------------- make gpu-check: env and runner


def _gpu_env(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path if path is not None else "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "export/tensorrt/gpu_env.py"),
            "--dry-run",
            "--venv",
            str(tmp_path / "venv"),
            "--tegra-release",
            str(tmp_path / "no-tegra"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _outside_make() -> dict[str, str]:
    """The environment without what a calling ``make test PYTEST_ARGS=...`` passes down to a nested make."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_gpu_env_without_a_gpu_exits_2_naming_what_is_missing(tmp_path):
    if subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("nvidia-smi is on PATH here")
    r = _gpu_env(tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        "make gpu-check: missing: no NVIDIA driver: nvidia-smi is not on PATH (install the "
        "NVIDIA driver, or run on a GPU host)"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "nvidia-smi", "echo 'No devices were found' >&2; exit 6")
    r = _gpu_env(tmp_path, path=f"{bin_dir}:/usr/bin:/bin")
    assert r.returncode == 2 and "no NVIDIA GPU usable: nvidia-smi exited 6 (No devices were found)" in r.stderr
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "gpu-check"],
        cwd=ROOT,
        env=_outside_make(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert make.returncode == 0 and "export/tensorrt/gpu_env.py" in make.stdout.splitlines()[0]


@pytest.mark.parametrize(("cuda", "extra"), [("12.4", "tensorrt-cu12"), ("13.0", "tensorrt-cu13")])
def test_gpu_env_picks_the_extra_by_the_drivers_cuda_major(tmp_path, cuda, extra):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "nvidia-smi", f"echo '| NVIDIA-SMI 580.65   Driver Version: 580.65   CUDA Version: {cuda} |'")
    r = _gpu_env(tmp_path, path=f"{bin_dir}:/usr/bin:/bin")
    assert r.returncode == 0, r.stderr
    assert f"driver CUDA {cuda.split('.')[0]}: pip extra {extra}" in r.stdout
    assert f"[cpu,dev,{extra}]" in r.stdout and str(tmp_path / "venv" / "bin" / "python") in r.stdout


def test_gpu_env_on_jetson_uses_jetpacks_tensorrt(tmp_path):
    tegra = tmp_path / "nv_tegra_release"
    tegra.write_text("# R36 (release), REVISION: 4.0\n")
    fake_site = tmp_path / "site"
    (fake_site / "tensorrt").mkdir(parents=True)
    (fake_site / "tensorrt" / "__init__.py").write_text("__version__ = '10.3.0.30'\n")
    with_trt = _script(tmp_path / "python-with-trt", f'PYTHONPATH={fake_site} exec {sys.executable} "$@"')
    r = _gpu_env(tmp_path, "--tegra-release", str(tegra), "--system-python", str(with_trt))
    assert r.returncode == 0, r.stderr
    assert "Jetson" in r.stdout and "JetPack's TensorRT 10.3.0.30 from the system Python" in r.stdout
    assert "dev,jetson]" in r.stdout and "tensorrt-cu" not in r.stdout  # the jetson extra: cuda-python 12
    r = _gpu_env(tmp_path, "--tegra-release", str(tegra), "--system-python", sys.executable)  # no tensorrt there
    if r.returncode == 0:
        pytest.skip("this Python imports tensorrt")
    assert r.returncode == 2 and "Jetson, but TensorRT does not import from" in r.stderr
    assert "sudo apt install nvidia-jetpack" in r.stderr


def test_gpu_env_switches_an_existing_venv_to_system_site_packages(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_env", ROOT / "export/tensorrt/gpu_env.py")
    gpu_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_env)
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.10\n")
    assert gpu_env._enable_system_site_packages(tmp_path) is True
    assert "include-system-site-packages = true" in (tmp_path / "pyvenv.cfg").read_text()
    assert gpu_env._enable_system_site_packages(tmp_path) is False


_HARNESS = """
import json, os, sys
import export.tensorrt.gpu_check as g
g.missing = lambda: []  # this test stands in for a GPU host: the steps are test doubles
g._report_base = lambda: {"machine": "test double", "status": "running", "passed": False, "steps": []}
py = sys.executable
write = ("import json, os; "
         "json.dump({'passed': True, 'latency_ms_batch1': 1.5}, open(os.environ['GPU_CHECK_STEP_OUT'], 'w'))")
g.STEPS = (g.Step("motion_tiny fp16", 60, (py, "-c", write)),
           g.Step("hangs", 1, (py, "-c", "import time; time.sleep(120)")),
           g.Step("kills the check", 60, (py, "-c", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)")),
           g.Step("never runs", 60, (py, "-c", "pass")))
sys.exit(g.main(["--out", sys.argv[1], "--work", sys.argv[2]]))
"""


def test_gpu_check_killed_mid_run_keeps_the_finished_steps(tmp_path):
    import signal

    out = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "-c", _HARNESS, str(out), str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    report = json.loads(out.read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["motion_tiny fp16"]["passed"] is True and steps["motion_tiny fp16"]["latency_ms_batch1"] == 1.5
    assert steps["hangs"]["passed"] is False and steps["hangs"]["error"] == "timed out after 1 s (killed)"
    assert steps["kills the check"]["status"] == "running" and steps["never runs"]["status"] == "pending"
    assert report["status"] == "running" and report["passed"] is False
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic writes: no temp left


def test_gpu_check_skipped_steps_count_as_not_passed(tmp_path):
    from export.tensorrt import gpu_check as g

    steps = (g.Step("a", 60, (sys.executable, "-c", "pass")), g.Step("b", 60, (sys.executable, "-c", "pass")))
    report = g.run_steps(steps, tmp_path / "r.json", tmp_path, 0, {"steps": []})
    assert [s["status"] for s in report["steps"]] == ["skipped", "skipped"] and report["passed"] is False
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    report = g.run_steps(steps, tmp_path / "r.json", tmp_path, 600, {"steps": []})
    assert [s["status"] for s in report["steps"]] == ["passed", "passed"] and report["passed"] is True
    assert [s.name for s in g.STEPS[:3]] == ["motion_tiny fp16", "motion_tiny int8", "motion_tiny fp32"]


def test_gpu_check_bundle_step_runs_on_the_fakes(fake_gpu, tmp_path):
    """The step code a first GPU run executes (build, ONNX Runtime parity, graphs, latency, memory), on the fakes."""
    from export.tensorrt import gpu_check as g

    fake_gpu("10.3.0")
    res = g.run_bundle_step("motion_tiny fp32", tmp_path)
    assert res["passed"] is True, res
    assert res["vs_onnxruntime_cpu"]["min_cosine"] > 0.9999 and res["graphs_match_plain"] is True
    plain, graphs = res["cuda_graph_false"], res["cuda_graph_true"]
    assert plain["device_memory_leak_bytes"] == graphs["device_memory_leak_bytes"] == 0
    assert graphs["describe"]["graphs_captured"] == [1, 3, 4]
    assert graphs["describe"]["device_memory"]["shared_by_contexts"] == 4  # main + 3 captured sizes, one block
    assert graphs["device_memory_after_runs_bytes"] == plain["device_memory_after_runs_bytes"]  # no memory per graph
    assert plain["latency_ms_batch1"] > 0 and res["tensorrt_build"]["tf32"] is False
