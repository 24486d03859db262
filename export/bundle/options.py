"""The options of ``make engine``, defined once: :class:`BuildRequest`'s fields are the table.

Each field carries its default, its choices, its help and the Makefile variable that sets it; the command line
(:func:`add_arguments`, :func:`request_from_args`), the Makefile's help (``python -m export.bundle.options
--make-help``; ``tests/export/test_engine_build.py`` checks the Makefile's defaults against the table) and the
build read them from here. Enumerations are imported from where they are defined: precisions and backends from
``runtime/options.py``, attention forms from ``export/onnx/forms.py``, calibration methods from
``calibration/precision/int8.py``, the TensorRT INT8 forms and hardware-compatibility levels from
``export/tensorrt/plan.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.cli_args import ArgumentParser, user_errors
from runtime.options import BACKENDS, PRECISIONS, Backend, Precision

from calibration.precision.int8 import METHODS as CALIB_METHODS
from export.onnx.forms import ATTENTION_CHOICES
from export.tensorrt.plan import HARDWARE_COMPATIBILITY, INT8_FORMS

__all__ = [
    "BuildRequest",
    "Option",
    "OPTIONS",
    "DEFAULTS",
    "DEFAULT_MODEL",
    "AUTO",
    "BACKEND_CHOICES",
    "ATTENTION_CHOICES",
    "CALIB_METHODS",
    "INT8_FORMS",
    "HARDWARE_COMPATIBILITY_CHOICES",
    "PRECISIONS",
    "BACKENDS",
    "Precision",
    "Backend",
    "parse_batch",
    "show",
    "add_arguments",
    "request_from_args",
    "make_help",
]

#: ``BACKEND=auto`` / ``ATTENTION=auto``: decided by the build (``export/bundle/target.py``)
AUTO = "auto"
BACKEND_CHOICES: tuple[str, ...] = (AUTO, *BACKENDS)
HARDWARE_COMPATIBILITY_CHOICES: tuple[str, ...] = tuple(HARDWARE_COMPATIBILITY)
DEFAULT_MODEL = "models/weights/motion_tiny.safetensors"


def parse_batch(text: str) -> tuple[int, int, int]:
    """``BATCH``: ``min:opt:max`` or one number N (``1:N:N``)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise argparse.ArgumentTypeError(f"BATCH={text!r}: expected min:opt:max with 1 <= min <= opt <= max")
    return parts[0], parts[1], parts[2]


def _opt(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    make: str | None = None,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    cli: bool = True,
) -> Any:
    """A :class:`BuildRequest` field with its command-line and Makefile description in ``metadata``."""
    meta = {"help": help, "choices": choices, "make": make, "parse": parse, "flag": flag, "cli": cli}
    return field(default=default, metadata=meta)


@dataclass
class BuildRequest:
    """Everything ``make engine`` takes (the table of options and defaults; field order is the manifest's
    ``build.request`` order)."""

    model: str = _opt(DEFAULT_MODEL, "preset name or checkpoint path", make="MODEL")
    precision: str = _opt(Precision.FP32.value, "the engine's precision", choices=PRECISIONS, make="PRECISION")
    backend: str = _opt(
        AUTO,
        "auto: TensorRT where usable, else OpenVINO on x86, else ONNX Runtime",
        choices=BACKEND_CHOICES,
        make="BACKEND",
    )
    out: str | None = _opt(None, "bundle folder (default engines/<model>-<precision>-<backend>)", make="OUT")
    calib: str | None = _opt(None, "folder of videos, .npy/.npz clips, or 'synthetic'", make="CALIB")
    labels: str | None = _opt(
        None,
        "label file: one name per line, a JSON list or {index: name} (default: the "
        "checkpoint's, else the published list with its class count)",
        make="LABELS",
    )
    preprocess: str | None = _opt(
        None,
        "preprocessing: a preset name or a JSON file (PreprocessConfig fields, or a "
        "Hugging Face preprocessor_config.json), over what the checkpoint implies",
        make="PREPROCESS",
    )
    random_weights: bool = _opt(
        False,
        "build a preset (an architecture without weights) from random weights; the "
        "bundle says so in its manifest, labels and predictions",
        make="RANDOM_WEIGHTS",
    )
    calib_clips: int = _opt(32, "calibration clips", parse=int)
    calib_method: str = _opt("max", "INT8 calibration method", choices=CALIB_METHODS)
    batch: tuple[int, int, int] = _opt(
        (1, 1, 8), "the engine's batch range min:opt:max", parse=parse_batch, make="BATCH"
    )
    attention: str = _opt(
        AUTO, "ONNX attention form (auto: the backend's best)", choices=ATTENTION_CHOICES, make="ATTENTION"
    )
    parity_clips: int = _opt(8, "clips of the parity check against PyTorch", parse=int)
    allow_parity_failure: bool = _opt(
        False, "publish a bundle whose parity is outside tolerance", make="ALLOW_PARITY_FAILURE"
    )
    allow_precision_fallback: bool = _opt(
        False,
        "publish a CPU fp16 bundle on a CPU without FP16/BF16 arithmetic "
        "(it runs f32 here; recorded in the manifest and the summary)",
        make="ALLOW_PRECISION_FALLBACK",
    )
    cache_dir: str = _opt("artifacts/cache", "cache of ONNX exports and calibrations")
    threads: int | None = _opt(
        None, "intra-op threads recorded in the session (0/None: the backend's default)", parse=int
    )
    seed: int = _opt(0, "seed of the synthetic clips", cli=False)
    # TensorRT only
    workspace_mib: int = _opt(4096, "TensorRT: builder workspace (MiB)", parse=int)
    dla_core: int | None = _opt(None, "TensorRT: DLA core (fp16/int8)", parse=int)
    hardware_compatibility: str = _opt(
        "none", "TensorRT: hardware-compatibility level", choices=HARDWARE_COMPATIBILITY_CHOICES
    )
    version_compatible: bool = _opt(False, "TensorRT: the plan runs on later TensorRT versions too")
    timing_cache: str | None = _opt(None, "TensorRT: timing cache file (default <cache-dir>/trt_timing.cache)")
    strongly_typed: bool = _opt(
        True,
        "TensorRT 10 only: FP32 ONNX + BuilderFlag.FP16 (or the Q/DQ ONNX + INT8/FP16 "
        "flags), LayerNorm/Softmax pinned FP32, instead of a strongly typed network (DLA on "
        "TensorRT 10)",
        flag="--builder-flags",
    )
    int8_form: str = _opt(
        INT8_FORMS[0], "TensorRT INT8 Q/DQ form: FP16 (default) or FP32 between the INT8 matmuls", choices=INT8_FORMS
    )
    cuda_graph: bool = _opt(False, "TensorRT: the runtime captures CUDA graphs by default")
    tf32: bool = _opt(
        False,
        "TensorRT: allow TF32 matmuls for FP32 math (default: strict FP32, BuilderFlag.TF32 "
        "cleared); parity is then held to TF32's own tolerance",
    )
    extra: dict[str, Any] = field(default_factory=dict)  # not an option: free-form, never recorded


@dataclass(frozen=True)
class Option:
    """One row of the table: a :class:`BuildRequest` field as the command line and the Makefile show it."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None
    make: str | None
    parse: Callable[[str], Any] | None
    flag: str
    cli: bool = True

    @property
    def switch(self) -> bool:
        """A boolean option: a flag that flips the default (``--allow-parity-failure``, ``--builder-flags``)."""
        return isinstance(self.default, bool)


OPTIONS: tuple[Option, ...] = tuple(
    Option(
        f.name,
        f.default,
        f.metadata["help"],
        f.metadata["choices"],
        f.metadata["make"],
        f.metadata["parse"],
        f.metadata["flag"] or "--" + f.name.replace("_", "-"),
        f.metadata["cli"],
    )
    for f in dataclasses.fields(BuildRequest)
    if "help" in f.metadata
)
#: every field's default, by name
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS}


def show(value: Any) -> str:
    """A default as it is typed on the command line (``1:1:8`` for a batch range, empty for none)."""
    if value is None:
        return ""
    return ":".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """One ``--flag`` per option: default, choices and help from the table."""
    for o in OPTIONS:
        if not o.cli:
            continue
        if o.switch:
            ap.add_argument(o.flag, dest=o.name, action="store_false" if o.default else "store_true", help=o.help)
        else:
            ap.add_argument(
                o.flag,
                dest=o.name,
                default=o.default,
                choices=o.choices,
                type=o.parse or str,
                help=o.help + (f" (default {show(o.default)})" if o.default is not None else ""),
            )


def request_from_args(ns: argparse.Namespace) -> BuildRequest:
    """The :class:`BuildRequest` of parsed arguments (:func:`add_arguments`)."""
    return BuildRequest(**{o.name: getattr(ns, o.name) for o in OPTIONS if o.cli})


def make_help() -> str:
    """The ``make engine`` options as the Makefile's help lists them: ``NAME=default  help [choices]``."""
    rows = []
    for o in OPTIONS:
        if o.make:
            default = "" if o.switch else show(o.default)
            choices = f" ({' | '.join(o.choices)})" if o.choices else ""
            rows.append(f"  {o.make}={default}".ljust(23) + " " + o.help + choices)
    return "\n".join(rows)


@user_errors("python -m export.bundle.options")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m export.bundle.options", description=__doc__.splitlines()[0])
    ap.add_argument("--make-help", action="store_true", help="the make engine options, one line each")
    ap.parse_args(argv)
    print(make_help())
    return 0


if __name__ == "__main__":
    sys.exit(main())
