"""Test doubles for TensorRT and cuda-python, and tiny ONNX models (a plain package, not tests).

* :mod:`.cuda` — cuda-python's ``cuda.bindings.runtime`` (streams as cuda-bindings wrappers, async queues, graphs);
* :mod:`.builder` — TensorRT's builder side (layers, parser, config with TF32 on by default, DLA profile rule,
  IAttention);
* :mod:`.runtime` — TensorRT's runtime side (engine, contexts with static or user-managed device memory);
* :mod:`.module` — the ``tensorrt`` module of one version, and :func:`install`;
* :mod:`.models` — tiny real ONNX models; :mod:`.helpers` — what the test files share.

Host memory stands in for device memory and ONNX Runtime for the engine: they check the call sequence, flags,
buffers and graph logic, not TensorRT itself.
"""

from .cuda import CudaStream, FakeCudart, native_handle_module
from .helpers import backend_manifest, opts, run_ort, trt_importable
from .models import (
    CLASSES,
    CLIP,
    FEAT,
    HIDDEN,
    make_attention,
    make_attention_fp16,
    make_contrib,
    make_decomposed_fp16,
    make_fp16,
    make_fp32,
    make_models,
    make_qdq,
)
from .module import fake_tensorrt, install

__all__ = [
    "CLASSES",
    "CLIP",
    "FEAT",
    "HIDDEN",
    "CudaStream",
    "FakeCudart",
    "backend_manifest",
    "fake_tensorrt",
    "install",
    "make_attention",
    "make_attention_fp16",
    "make_contrib",
    "make_decomposed_fp16",
    "make_fp16",
    "make_fp32",
    "make_models",
    "make_qdq",
    "native_handle_module",
    "opts",
    "run_ort",
    "trt_importable",
]
