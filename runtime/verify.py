"""``Engine(..., verify_on_device=...)``: the stored parity at load, once per device, the verdict cached.

``"once"`` (the default) runs the bundle's stored parity (``runtime/reference.py``) the first time a bundle loads on
a device and caches the verdict; later loads with a cached pass skip it (a cached failure runs again). ``"always"``
runs it at every load; ``"never"`` skips it. A bundle without a reference set loads with the verdict
``unavailable``. A device whose engine computes something else raises :class:`DeviceMismatchError` with the
numbers, whatever the mode (unless the build itself kept the bundle with a failed parity, ``ALLOW_PARITY_FAILURE``:
then the verdict says ``failed`` with ``allowed: true`` and the bundle loads, as it did at the build).

The cache lives in the user's cache folder, never in the bundle: ``$TIMESFORMER_CACHE/verified``, else
``$XDG_CACHE_HOME/timesformer/verified`` (``~/.cache/timesformer/verified``). A verdict's file is named by a key
of the bundle (its validated manifest without ``build``: every file's SHA-256, the session, the tolerances), the
device fingerprint (``runtime/device.py``), the Engine's device and options; it is written atomically and checked
when read (a malformed or foreign file is ignored and replaced).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .device import fingerprint, summary
from .errors import BundleError
from .files import write_json_atomic
from .reference import has_reference, load_reference, stored_parity

__all__ = ["MODES", "DeviceMismatchError", "cache_root", "verdict_key", "verify_on_load"]

MODES = ("once", "always", "never")
CACHE_SCHEMA = 1
#: Engine options that cannot change what the engine computes: not in the key
_NOT_NUMERIC = ("cache_dir",)
_METRICS = ("max_abs_logit", "mean_abs_logit", "min_cosine", "mean_cosine", "top1_agreement", "top5_agreement")


class DeviceMismatchError(BundleError):
    """The engine computes something else on this device than the build measured; the message has the numbers."""


def cache_root() -> Path:
    """``$TIMESFORMER_CACHE/verified``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/timesformer/verified``."""
    root = os.environ.get("TIMESFORMER_CACHE")
    if root:
        return Path(root) / "verified"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "timesformer" / "verified"


def verdict_key(manifest: dict[str, Any], device_key: str, device: str, options: dict[str, Any]) -> str:
    """The cache key: the bundle (manifest without ``build``), the fingerprint's key, the device and options."""
    bundle = {k: v for k, v in manifest.items() if k != "build"}
    numeric = {k: repr(v) for k, v in sorted(options.items()) if k not in _NOT_NUMERIC}
    text = json.dumps([bundle, device_key, device, numeric], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The cached verdict at ``path`` if it is well-formed and for ``key``; None otherwise."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    v = d.get("verdict") if isinstance(d, dict) else None
    if (
        not isinstance(v, dict)
        or d.get("schema") != CACHE_SCHEMA
        or d.get("key") != key
        or v.get("status") not in ("passed", "failed")
        or not isinstance(v.get("metrics"), dict)
        or not all(isinstance(v["metrics"].get(k), (int, float)) for k in _METRICS)
        or not isinstance(v.get("failures"), list)
    ):
        return None
    return v


def _write_cached(path: Path, key: str, verdict: dict[str, Any], record: dict[str, Any]) -> None:
    try:
        write_json_atomic(path, {"schema": CACHE_SCHEMA, "key": key, "fingerprint": record, "verdict": verdict})
    except OSError as e:  # a read-only home costs a re-check at the next load, nothing else
        print(f"[verify] warning: cannot write the verdict cache {path} ({e})", file=sys.stderr)


def _cache_dir(engine: Any, cache: str | os.PathLike | None) -> Path:
    root = (cache_root() if cache is None else Path(cache)).expanduser().resolve()
    bundle = Path(engine.bundle_dir).resolve()
    if root == bundle or bundle in root.parents:
        raise BundleError(
            f"verify_cache {root}: inside the bundle {bundle}; verdicts live outside it (a bundle stays as built)"
        )
    return root


def verify_on_load(
    engine: Any, mode: str, cache: str | os.PathLike | bool | None, device: str, options: dict[str, Any]
) -> dict[str, Any]:
    """The verdict for ``engine`` on this device (see the module docstring); raises DeviceMismatchError."""
    if mode not in MODES:
        raise ValueError(f"verify_on_device: expected one of {MODES}, got {mode!r}")
    if mode == "never":
        return {"status": "skipped", "mode": mode, "reason": "verify_on_device='never'"}
    m = engine.manifest
    if not has_reference(m):
        return {
            "status": "unavailable",
            "mode": mode,
            "reason": "the bundle carries no reference set (built before "
            "bundles did); rebuild it to verify it on devices",
        }
    record = fingerprint()
    key = verdict_key(m, record["key"], device, options)
    path = None if cache is False else _cache_dir(engine, None if cache is True else cache) / f"{key}.json"
    if mode == "once" and path is not None:
        cached = _read_cached(path, key)
        if cached is not None and cached["status"] == "passed":
            return {**cached, "mode": mode, "cached": True}
    result = stored_parity(engine, load_reference(engine.bundle_dir, m))
    verdict = {
        "status": "passed" if result["passed"] else "failed",
        "mode": mode,
        "cached": False,
        "key": key,
        "fingerprint": record["key"],
        "device": summary(record),
        "checked_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "clips": result["clips"],
        "failures": result["failures"],
        "tolerance": result["tolerance"],
        "metrics": {k: result["metrics"][k] for k in _METRICS},
    }
    if path is not None:
        _write_cached(path, key, verdict, record)
    if not result["passed"] and (m.get("parity") or {}).get("allowed_failure"):
        verdict["allowed"] = True  # the build kept it although its own parity failed (ALLOW_PARITY_FAILURE)
        return verdict
    if not result["passed"]:
        mt = verdict["metrics"]
        raise DeviceMismatchError(
            f"{engine.bundle_dir}: this device computes something else than the build measured: "
            f"{'; '.join(result['failures'])} on the {result['clips']} stored clips (max |dlogit| "
            f"{mt['max_abs_logit']:.4g}, min cosine {mt['min_cosine']:.6f}, top-1 agreement "
            f"{mt['top1_agreement']:.3f}; build tolerance {result['tolerance']}) on {verdict['device']}. "
            f"python -m runtime check {engine.bundle_dir} shows it per clip and per block; "
            "verify_on_device='never' loads it anyway"
        )
    return verdict
