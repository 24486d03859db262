"""TensorRT on a real NVIDIA GPU: tiny engines built and run through ``TensorRTBackend``, compared with ONNX
Runtime. Every test skips, saying what is missing, without TensorRT, cuda-python or a GPU (``make gpu-check``
runs them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.fake_tensorrt import CLASSES, CLIP, make_models, opts
from tests.support.fake_tensorrt import backend_manifest as _manifest, run_ort as _ort

from export.tensorrt.build import build_engine
from runtime.backends.tensorrt_backend import TensorRTBackend, TensorRTBackendError
from runtime.backends.tensorrt_detect import tensorrt_available


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("trt_models"))


def _require_gpu_trt():
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT/GPU unavailable: {reason}")


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fp32_engine_matches_onnxruntime(models, tmp_path, cuda_graph):
    _require_gpu_trt()
    cache = tmp_path / "timing.cache"
    info = build_engine(
        models["fp32"],
        tmp_path / "model.plan",
        opts(timing_cache=str(cache)),  # strict FP32
        progress=False,
    )
    assert info["tf32"] is False and info["cleared_builder_flags"] == ["TF32"]
    assert info["plan_bytes"] > 0 and (tmp_path / "model.plan").is_file() and cache.is_file()
    assert info["timing_cache"]["saved"] is True
    backend = TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp32"), device="cuda", cuda_graph=cuda_graph)
    try:
        rng = np.random.default_rng(2)
        for batch in (1, 3, 4, 3, 1):
            x = rng.standard_normal((batch, *CLIP)).astype(np.float32)
            y = backend.infer(x)
            assert y.shape == (batch, CLASSES) and y.dtype == np.float32
            np.testing.assert_allclose(y, _ort(models["fp32"], x), rtol=1e-4, atol=1e-4)
        d = backend.describe()
        assert d["backend"] == "tensorrt" and d["batch_range"] == [1, 4]
        if cuda_graph:
            assert d["graphs_captured"] == [1, 3, 4]
        # one activation block (USER_MANAGED) for the main context and each captured batch size
        assert d["device_memory"]["shared_by_contexts"] == (4 if cuda_graph else 1)
        assert d["device_memory"]["activation_bytes"] >= 0
        with pytest.raises(TensorRTBackendError, match="outside the plan's profile"):
            backend.infer(np.zeros((5, *CLIP), np.float32))
    finally:
        backend.close()
    backend.close()  # idempotent
    with pytest.raises(TensorRTBackendError, match="closed"):
        backend.infer(np.zeros((1, *CLIP), np.float32))


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime(models, tmp_path):
    _require_gpu_trt()
    info = build_engine(models["fp16"], tmp_path / "model.plan", opts(precision="fp16"), progress=False)
    assert info["strongly_typed"] is True
    backend = TensorRTBackend(tmp_path / "model.plan", _manifest(info, "fp16"))
    try:
        x = np.random.default_rng(3).standard_normal((2, *CLIP)).astype(np.float32)
        np.testing.assert_allclose(backend.infer(x), _ort(models["fp16"], x), atol=2e-2)
    finally:
        backend.close()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_plan_from_other_trt_version_is_refused(models, tmp_path):
    _require_gpu_trt()
    info = build_engine(models["fp32"], tmp_path / "model.plan", opts(), progress=False)
    manifest = _manifest(info, "fp32")
    manifest["backend_version"] = "9.0.0"
    with pytest.raises(TensorRTBackendError, match=r"model\.plan: built with TensorRT 9\.0\.0"):
        TensorRTBackend(tmp_path / "model.plan", manifest)
    (tmp_path / "junk.plan").write_bytes(b"\0" * 64)
    with pytest.raises(TensorRTBackendError, match=r"junk\.plan: TensorRT .* could not deserialize"):
        TensorRTBackend(tmp_path / "junk.plan", _manifest(info, "fp32"))
