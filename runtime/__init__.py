"""The runtime that camera apps embed: ``from runtime import Engine``.

Imports numpy and, when an engine is opened, its backend (onnxruntime, or tensorrt + cuda-python).
Never torch, never the rest of this project.
"""

from .engine import Engine
from .errors import BundleError, InputError
from .prediction import Prediction
from .preprocess import PreprocessConfig, preprocess_frames
from .stream import ClipStream

__all__ = ["Engine", "InputError", "Prediction", "BundleError", "PreprocessConfig", "preprocess_frames", "ClipStream"]
