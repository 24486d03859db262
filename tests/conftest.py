"""Shared fixtures: the committed motion model, freshly generated held-out videos, and built bundles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOTION_MODEL = ROOT / "models" / "weights" / "motion_tiny.safetensors"
#: a seed the training script never uses (it trains on seed 0 and evaluates on others below 1000)
HELDOUT_SEED = 4242

# Keep the 2-core CI machine responsive: one intra-op pool per process.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory) -> Path:
    """The runtime's user cache (device verdicts, compiled models) in a temporary folder, not ~/.cache."""
    path = tmp_path_factory.mktemp("user-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIMESFORMER_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def motion_model_path() -> Path:
    if not MOTION_MODEL.is_file():
        pytest.fail(f"{MOTION_MODEL} is missing: it is committed to the repository (make train-motion rebuilds it)")
    return MOTION_MODEL


@pytest.fixture(scope="session")
def motion_model(motion_model_path):
    from models import load_checkpoint

    return load_checkpoint(motion_model_path).eval()


@pytest.fixture(scope="session")
def heldout_videos(tmp_path_factory) -> list[tuple[Path, int]]:
    """16 real H.264 files of the motion classes, from a seed never used in training (2 per class)."""
    from calibration.clips.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("heldout"), 16, HELDOUT_SEED, progress=False)


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, motion_model_path) -> Path:
    """An ONNX Runtime FP32 bundle of the motion model, built once through ``make engine``'s code path."""
    from export.bundle.build import BuildRequest, build_bundle

    base = tmp_path_factory.mktemp("bundles")
    req = BuildRequest(
        model=str(motion_model_path),
        precision="fp32",
        backend="onnxruntime",
        out=str(base / "fp32"),
        cache_dir=str(base / "cache"),
        parity_clips=4,
        batch=(1, 2, 4),
    )
    return build_bundle(req)
