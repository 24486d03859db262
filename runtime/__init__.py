"""The runtime that camera apps embed: ``from runtime import Engine``.

Imports numpy and, when an engine is opened, its backend (onnxruntime, or tensorrt + cuda-python).
Never torch, never the rest of this project.
"""
from .engine import Engine, InputError, Prediction
from .manifest import BundleError
from .preprocess import PreprocessConfig, preprocess_frames
from .stream import ClipStream

__all__ = ["Engine", "InputError", "Prediction", "BundleError", "PreprocessConfig", "preprocess_frames", "ClipStream"]
