"""OpenVINO backend (Intel and AMD x86 CPUs): the bundle's ONNX compiled by OpenVINO's CPU plugin.

OpenVINO reads the ONNX file itself, including the Q/DQ INT8 model that TensorRT gets, so one quantised file
serves every backend. What the manifest's ``session`` asks for (``runtime/backends/openvino_session.py``):

* the inference precision: FP32 bundles run with ``INFERENCE_PRECISION_HINT=f32`` set explicitly, since OpenVINO
  defaults to bf16 on CPUs that have it and an FP32 bundle must stay exact; FP16 bundles run in bf16 (or f16) where
  ``OPTIMIZATION_CAPABILITIES`` has it, in f32 otherwise;
* ``PERFORMANCE_HINT=LATENCY`` (one clip at a time, as a camera sends them);
* a compiled-model cache in a user cache folder (never inside the bundle): the first load reads the ONNX from the
  bytes ``runtime.Engine`` verified, compiles it and exports the compiled model to
  ``<cache>/<engine sha256>/<settings>.blob``; later loads import that blob and never parse the ONNX, so a camera
  app starts fast. The blob is keyed by the engine's SHA-256 (the one the manifest lists and the Engine checks),
  the OpenVINO version and the compile settings, and signed: beside each blob, ``<blob>.sig`` holds an HMAC-SHA256
  of the engine's SHA-256, the blob's name and its bytes under a per-user secret key (``cache_key_path()``, mode
  0600, outside the cache folder). A blob whose signature does not verify (planted, edited, truncated, or written
  by another user) is never imported: the ONNX is compiled again and the entry replaced (issue 28 #5). Without a
  usable key (not ours, readable by others) the cache is not used. OpenVINO's own ``CACHE_DIR`` is not used: it keys
  ``compile_model(path)`` by the file's path, not its content (a rebuilt bundle at the same path would get the old
  compiled model), and ``compile_model(model)`` re-reads and hashes the whole model on every load.

Thread safety: a ``CompiledModel`` may be shared, an ``InferRequest`` may not. Each call takes an idle request
from a pool (making a new one when all are busy) and puts it back afterwards, so threads never share a request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import secrets
import stat
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from .base import Backend
from .openvino_session import OpenVINOSession, choose_precision

__all__ = [
    "OpenVINOBackend",
    "OpenVINOUnavailable",
    "import_openvino",
    "openvino_available",
    "default_cache_root",
    "cache_key_path",
    "INSTALL_HINT",
]

INSTALL_HINT = "pip install './runtime[openvino]' (the runtime's openvino extra), or pip install 'openvino>=2025.0'"


class OpenVINOUnavailable(RuntimeError):
    """OpenVINO cannot be imported here; the message says how to install it."""


def import_openvino() -> Any:
    """``import openvino``; raises :class:`OpenVINOUnavailable` with the install command."""
    try:
        import openvino as ov
    except Exception as e:
        raise OpenVINOUnavailable(
            f"this bundle needs OpenVINO, which is not importable ({type(e).__name__}: {e}); {INSTALL_HINT}"
        ) from e
    return ov


def default_cache_root() -> Path:
    """Where compiled models are cached: ``$TIMESFORMER_CACHE/openvino``, else the user cache folder."""
    root = os.environ.get("TIMESFORMER_CACHE")
    if root:
        return Path(root) / "openvino"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "timesformer" / "openvino"


def cache_key_path() -> Path:
    """This user's secret key for signing compiled models: ``$TIMESFORMER_CACHE_KEY``, else
    ``$XDG_CONFIG_HOME/timesformer/cache.key`` (``~/.config/...``): deliberately not inside the cache folder, which
    may be shared."""
    env = os.environ.get("TIMESFORMER_CACHE_KEY")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "timesformer" / "cache.key"


def _cpu_key() -> str:
    """What the compiled kernels depend on besides the settings: the CPU's ISA flags and a cap on them
    (``ONEDNN_MAX_CPU_ISA``), hashed short; a cache shared between machines (a network home) then never hands one CPU
    the kernels compiled for another."""
    from ..cpu_isa import ONEDNN_CAP_ENV
    from ..device import cpu_info

    parts = [",".join(cpu_info()["isa"]), os.environ.get(ONEDNN_CAP_ENV, "")]
    return "cpu" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def _cache_key() -> bytes | None:
    """The 32-byte key (created, mode 0600, on first use); None with a warning when it is not safely ours."""
    path = cache_key_path()
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with open(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        fd = os.open(path, flags)
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            key = f.read(33)
    except OSError as e:
        print(
            f"[openvino] warning: no compiled-model cache key at {path} ({e.strerror or e}); compiling without the "
            "cache",
            file=sys.stderr,
        )
        return None
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    if not stat.S_ISREG(st.st_mode) or not mine or st.st_mode & 0o077 or len(key) != 32:
        print(
            f"[openvino] warning: the compiled-model cache key {path} is not a private 32-byte file of this user "
            "(mode 0600); compiling without the cache",
            file=sys.stderr,
        )
        return None
    return key


def _signature(key: bytes, blob: Path, engine_sha: str, data: bytes) -> str:
    msg = b"\0".join([b"timesformer-openvino-cache-1", engine_sha.encode(), blob.name.encode()])
    return hmac.new(key, msg + b"\0" + hashlib.sha256(data).digest(), hashlib.sha256).hexdigest()


def _device_and_capabilities(ov: Any, core: Any, settings: OpenVINOSession, device: str) -> tuple[str, list[str]]:
    """OpenVINO's device name for ``device`` (checked to exist here) and its ``OPTIMIZATION_CAPABILITIES``."""
    ov_device = settings.device if device in ("cpu", "auto") else device.split(":")[0].upper()
    if ov_device not in core.available_devices:
        raise ValueError(
            f"device: OpenVINO {ov.__version__} has {core.available_devices} here, not {ov_device!r} "
            f"(from device={device!r})"
        )
    caps = list(core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES"))
    if ov_device == "CPU":  # issue 25: ONEDNN_MAX_CPU_ISA may have taken bf16 away
        from ..cpu_isa import openvino_capabilities

        caps = openvino_capabilities(caps)
    return ov_device, caps


def _thread_count(threads: int | None, settings: OpenVINOSession) -> int:
    """INFERENCE_NUM_THREADS: ``threads`` (checked against this machine's CPUs), else the bundle's, capped."""
    from .onnxruntime_backend import available_cpus

    cpus = available_cpus()
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4 * cpus
    ):
        raise ValueError(f"threads: expected 1..{4 * cpus} (this machine has {cpus} CPUs), got {threads!r}")
    return threads if threads is not None else min(settings.num_threads, cpus)  # issue 28 #12


def _check_model(compiled: Any, engine_path: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`BundleError` when the compiled model's input/output names, classes or fixed input dims are
    not the manifest's."""
    names_in = set(compiled.input(0).get_names())
    names_out = set(compiled.output(0).get_names())
    want_in, want_out = manifest["input"]["name"], manifest["output"]["name"]
    classes = compiled.output(0).get_partial_shape()[-1]
    if (
        want_in not in names_in
        or want_out not in names_out
        or (classes.is_static and classes.get_length() != manifest["output"]["shape"][-1])
    ):
        raise BundleError(
            f"{engine_path}: the model's input/output are {sorted(names_in)}/{sorted(names_out)} "
            f"with {classes} classes, the manifest says {want_in!r}/{want_out!r} with "
            f"{manifest['output']['shape'][-1]}: not the model this bundle was built with"
        )
    pshape = compiled.input(0).get_partial_shape()
    dims = [d.get_length() if d.is_static else -1 for d in pshape] if pshape.rank.is_static else []
    from .onnxruntime_backend import _check_fixed_dims

    _check_fixed_dims(engine_path, want_in, dims, manifest["input"]["shape"])  # issue 28 #16


class OpenVINOBackend(Backend):
    """``CompiledModel`` with the settings the bundle recorded, and a pool of infer requests."""

    name = "openvino"
    thread_safe = True

    def __init__(
        self,
        engine_path: Path,
        manifest: dict[str, Any],
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        engine_bytes: bytes | None = None,
        **options: Any,
    ) -> None:
        """``cache_dir``: None (the user cache folder, when the bundle asks for caching), False (no cache) or a
        folder. ``threads``: INFERENCE_NUM_THREADS instead of the bundle's. ``engine_bytes``: the engine file as
        ``runtime.Engine`` read and verified it (else it is read from ``engine_path``)."""
        super().__init__(engine_path, manifest, device, **options)
        if options:
            raise TypeError(f"OpenVINO backend: unknown options {sorted(options)}; expected threads, cache_dir")
        ov = import_openvino()
        settings = OpenVINOSession.from_dict(manifest.get("session") or {}, "manifest.json: session")
        core = ov.Core()
        ov_device, caps = _device_and_capabilities(ov, core, settings, device)
        precision = choose_precision(settings, caps)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": settings.performance_hint}
        n = _thread_count(threads, settings)
        if n:
            config["INFERENCE_NUM_THREADS"] = int(n)
        blob = self._cache_file(engine_path, manifest, settings, cache_dir, ov.__version__, ov_device, config)
        key = _cache_key() if blob is not None else None
        if key is None:
            blob = None
        t0 = time.perf_counter()
        self.loaded_from_cache = False
        self.compiled: Any = None
        self._engine_sha = blob.parent.name if blob is not None else ""
        self.compiled = self._load(core, ov.__version__, engine_path, engine_bytes, blob, key, ov_device, config)
        self.load_seconds = time.perf_counter() - t0
        _check_model(self.compiled, engine_path, manifest)  # cheap; they matter with verify=False
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._idle.put(self.compiled.create_infer_request())
        self.settings = {
            "openvino": ov.__version__,
            "ov_device": ov_device,
            "inference_precision": precision,
            "inference_precision_asked": list(settings.inference_precision),
            "capabilities": caps,
            "performance_hint": settings.performance_hint,
            "num_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "model_cache": str(blob) if blob is not None else None,
            "loaded_from_cache": self.loaded_from_cache,
            "load_seconds": round(self.load_seconds, 3),
        }
        from ..cpu_isa import openvino_int8_check

        self.settings["int8_isa"] = openvino_int8_check(manifest)  # issue 25: warns where int8 sums saturate

    def _load(
        self,
        core: Any,
        version: str,
        engine_path: Path,
        engine_bytes: bytes | None,
        blob: Path | None,
        key: bytes | None,
        ov_device: str,
        config: dict[str, Any],
    ) -> Any:
        """Set and return ``self.compiled``: imported from a blob that verifies, else compiled from the ONNX (and
        cached)."""
        data = self._verified_blob(blob, key) if blob is not None and key is not None else None
        if data is not None:
            try:
                self.compiled = core.import_model(data, ov_device, config)
                self.loaded_from_cache = True
            except Exception:  # noqa: BLE001 - a blob of another OpenVINO build: compile again and replace it
                self.compiled = None
        if self.compiled is None:
            data = engine_bytes if engine_bytes is not None else Path(engine_path).read_bytes()
            try:
                model = core.read_model(data)  # ONNX from the verified bytes (OpenVINO's ONNX frontend)
                self.compiled = core.compile_model(model, ov_device, config)
            except Exception as e:  # OpenVINO raises RuntimeError subclasses with long C++ traces
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise RuntimeError(
                    f"{engine_path}: OpenVINO {version} cannot read or compile it for "
                    f"{ov_device} ({type(e).__name__}: {first})"
                ) from e
            if blob is not None and key is not None:
                self._write_blob(blob, key)
        return self.compiled

    @staticmethod
    def _cache_file(
        engine_path: Path,
        manifest: dict[str, Any],
        settings: OpenVINOSession,
        cache_dir: str | os.PathLike | bool | None,
        version: str,
        device: str,
        config: dict[str, Any],
    ) -> Path | None:
        """``<root>/<engine sha256>/<openvino version>-<device>-<settings>.blob``, or None when caching is off."""
        if cache_dir is False or (cache_dir is None and not settings.model_cache):
            return None
        root = default_cache_root() if cache_dir is None or cache_dir is True else Path(cache_dir)
        entry = (manifest.get("files") or {}).get(manifest.get("engine_file", ""), {})
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not sha:  # a manifest without a files table (schema 1): hash the engine here
            from ..files import sha256_file

            sha = sha256_file(engine_path)
        bundle = Path(engine_path).resolve().parent
        root = Path(root).expanduser().resolve()
        if root == bundle or bundle in root.parents:
            raise BundleError(
                f"cache_dir {root}: inside the bundle {bundle}; the compiled-model cache must live "
                "outside it (a bundle stays as built)"
            )
        key = "-".join([version.split("-")[0], device, _cpu_key()] + [f"{k}={v}" for k, v in sorted(config.items())])
        return root / sha / (key.replace("/", "_").replace(" ", "") + ".blob")

    def _verified_blob(self, blob: Path, key: bytes) -> bytes | None:
        """The blob's bytes when its signature verifies under ``key``; None (compile instead) otherwise."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            with open(os.open(blob, flags), "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return None
                data = f.read()
            sig = Path(str(blob) + ".sig").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(sig, _signature(key, blob, self._engine_sha, data)):
            print(
                f"[openvino] warning: {blob}: its signature does not verify (not written by this user's runtime "
                "for this engine); compiling the bundle's ONNX instead and replacing it",
                file=sys.stderr,
            )
            return None
        return data

    def _write_blob(self, blob: Path, key: bytes) -> None:
        """Export the compiled model to ``blob`` and its signature to ``<blob>.sig`` (each atomically); a read-only
        or full cache only costs speed."""
        from ..files import write_bytes_atomic, write_text_atomic

        compiled = self.compiled
        if compiled is None:  # nothing compiled, nothing to cache
            return
        try:
            stream = compiled.export_model()
            data = stream.getvalue() if hasattr(stream, "getvalue") else bytes(stream)
            blob.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(blob, data)
            write_text_atomic(Path(str(blob) + ".sig"), _signature(key, blob, self._engine_sha, data) + "\n")
        except OSError as e:
            print(
                f"[openvino] warning: cannot write the compiled-model cache {blob} ({e}); the next load compiles again",
                file=sys.stderr,
            )

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.compiled is None:
            raise RuntimeError(f"{self.engine_path}: the OpenVINO model was closed")
        try:
            request = self._idle.get_nowait()
        except queue.Empty:  # every request is busy in another thread: one more (cheap; shares the model)
            request = self.compiled.create_infer_request()
        try:
            request.set_input_tensor(0, _tensor(x))
            request.infer()
            # the output tensor belongs to the request, which the next call reuses: copy it out
            out = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            self._idle.put(request)
        return out

    def close(self) -> None:
        self._idle = queue.SimpleQueue()
        self.compiled = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, **self.settings}


def _tensor(x: np.ndarray) -> Any:
    import openvino as ov

    # shares x's memory (x is contiguous, validated by Engine); no copy of a base-size clip per call
    return ov.Tensor(x, shared_memory=True)


def openvino_available() -> tuple[bool, str]:
    """Whether OpenVINO can run bundles on this machine's CPU, and a one-line why (version, capabilities)."""
    try:
        ov = import_openvino()
        core = ov.Core()
        caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception as e:  # noqa: BLE001 - not installed, or no CPU plugin
        return False, f"OpenVINO not usable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return True, f"OpenVINO {ov.__version__.split('-')[0]} on {name} ({', '.join(caps)})"
