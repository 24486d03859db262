"""Prometheus metrics of a camera hub: ``python -m runtime BUNDLE SOURCES... --metrics-port 9108``.

Needs the optional ``prometheus_client`` (``pip install 'timesformer-runtime[metrics]'``). The endpoint binds to
127.0.0.1 unless told otherwise. Counters and gauges are read from :meth:`CameraHub.metrics` at scrape time (one
source of truth); the histograms are fed by the hub's per-call hook. Metrics (all prefixed ``timesformer_``):

====================================  =========  ==========================================================
``camera_state``                      gauge      1 for the camera's current state, 0 for the others; labels
                                                 ``camera``, ``source``, ``state`` (connecting, live, retrying,
                                                 failed, ended, ...)
``camera_last_error_info``            gauge      1, labels ``camera`` and ``error`` (the last error, 200 chars)
``camera_frames_total``               counter    frames decoded (``camera``)
``camera_windows_total``              counter    windows that fell due
``camera_predictions_total``          counter    windows predicted
``camera_dropped_total``              counter    windows dropped (a full queue or too old)
``camera_failed_windows_total``       counter    windows whose engine call failed
``camera_reconnects_total``           counter    reconnects that brought frames back
``camera_reconnect_attempts_total``   counter    reconnect attempts
``camera_queued``                     gauge      windows waiting
``camera_latency_seconds``            histogram  last frame's arrival to the result (``camera``)
``engine_call_seconds``               histogram  time inside ``engine.infer`` per call
``engine_windows_total``              counter    windows computed by successful calls
``engine_busy_seconds_total``         counter    time inside ``engine.infer`` (failed calls too)
``engine_errors_total``               counter    failed engine calls
``hub_batching``                      gauge      1 when the hub batches across cameras now, else 0; labels
                                                 ``mode`` (auto, on, off)
``hub_seconds_per_window``            gauge      the averaged engine time per window, ``kind`` single|batched
``bundle_info``                       gauge      1; labels ``name``, ``sha256`` (the engine file's),
                                                 ``backend``, ``precision``, ``verification`` (the on-device
                                                 check's verdict: passed, failed, skipped, unavailable, unknown)
====================================  =========  ==========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .hub import CameraHub

__all__ = ["HubExporter", "serve_metrics", "bundle_labels", "STATES", "PREFIX"]

PREFIX = "timesformer_"
STATES = ("connecting", "live", "retrying", "failed", "ended", "waiting for frames", "removed")
_COUNTERS = (
    ("frames", "camera_frames", "frames decoded"),
    ("windows_due", "camera_windows", "windows that fell due"),
    ("predictions", "camera_predictions", "windows predicted"),
    ("dropped", "camera_dropped", "windows dropped (a full queue or too old)"),
    ("failed", "camera_failed_windows", "windows whose engine call failed"),
    ("reconnects", "camera_reconnects", "reconnects that brought frames back"),
    ("reconnect_attempts", "camera_reconnect_attempts", "reconnect attempts"),
)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        raise RuntimeError("--metrics-port needs prometheus_client: pip install 'timesformer-runtime[metrics]'") from e
    return prometheus_client


def bundle_labels(engine: Any) -> dict[str, str]:
    """``name``, ``sha256`` (the engine file's), ``backend``, ``precision``, ``verification`` of an engine."""
    manifest = getattr(engine, "manifest", None) or {}
    files, engine_file = manifest.get("files") or {}, manifest.get("engine_file")
    bundle = getattr(engine, "bundle_dir", None)
    verdict = getattr(engine, "verification", None)
    return {
        "name": str(getattr(bundle, "name", bundle or "unknown")),
        "sha256": str((files.get(engine_file) or {}).get("sha256", "unknown")),
        "backend": str(manifest.get("backend", "unknown")),
        "precision": str(manifest.get("precision", "unknown")),
        "verification": str(verdict.get("status", "unknown")) if isinstance(verdict, dict) else "unknown",
    }


class HubExporter:
    """A Prometheus collector for one hub, and the histograms its per-call hook feeds (see the module docstring).
    Registers on ``registry`` (a new ``CollectorRegistry`` by default) and sets ``hub.on_call``."""

    def __init__(self, hub: "CameraHub", registry: Any = None) -> None:
        pc = _prometheus()
        self.hub, self.registry = hub, registry if registry is not None else pc.CollectorRegistry()
        self.latency = pc.Histogram(
            f"{PREFIX}camera_latency_seconds",
            "last frame's arrival to the result",
            ["camera"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.call = pc.Histogram(
            f"{PREFIX}engine_call_seconds",
            "time inside engine.infer per call",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.windows = pc.Counter(
            f"{PREFIX}engine_windows", "windows computed by successful engine calls", registry=self.registry
        )
        self.labels = bundle_labels(hub.engine)
        self.registry.register(self)
        hub.on_call = self._on_call

    def _on_call(self, n: int, seconds: float, latencies: list[tuple[Any, float]]) -> None:
        self.call.observe(seconds)
        self.windows.inc(n)
        for camera, lat in latencies:
            self.latency.labels(str(camera)).observe(lat)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.hub.metrics()
        state = GaugeMetricFamily(
            f"{PREFIX}camera_state", "1 for the camera's current state", labels=["camera", "source", "state"]
        )
        error = GaugeMetricFamily(
            f"{PREFIX}camera_last_error_info", "the camera's last error", labels=["camera", "error"]
        )
        queued = GaugeMetricFamily(f"{PREFIX}camera_queued", "windows waiting", labels=["camera"])
        counters = {
            key: CounterMetricFamily(f"{PREFIX}{name}", text, labels=["camera"]) for key, name, text in _COUNTERS
        }
        for cid, c in m["cameras"].items():
            states = STATES if c["status"] in STATES else (*STATES, c["status"])
            for s in states:
                state.add_metric([cid, c["source"], s], 1.0 if s == c["status"] else 0.0)
            if c["last_error"]:
                error.add_metric([cid, str(c["last_error"])[:200]], 1.0)
            queued.add_metric([cid], c["queued"])
            for key, fam in counters.items():
                fam.add_metric([cid], c[key])
        yield from (state, error, queued, *counters.values())
        yield CounterMetricFamily(f"{PREFIX}engine_busy_seconds", "time inside engine.infer", value=m["busy_s"])
        yield CounterMetricFamily(f"{PREFIX}engine_errors", "failed engine calls", value=m["engine_errors"])
        b = m["batching"]
        batched = GaugeMetricFamily(
            f"{PREFIX}hub_batching", "1 when the hub batches across cameras now", labels=["mode"]
        )
        batched.add_metric([b["mode"]], 1.0 if b["batched"] else 0.0)
        per = GaugeMetricFamily(f"{PREFIX}hub_seconds_per_window", "averaged engine time per window", labels=["kind"])
        for kind, ms in b["per_window_ms"].items():
            if ms is not None:
                per.add_metric([kind], ms / 1e3)
        info = GaugeMetricFamily(f"{PREFIX}bundle_info", "the engine bundle", labels=list(self.labels))
        verdict = m.get("verification")
        labels = {
            **self.labels,
            "verification": str(verdict.get("status", "unknown"))
            if isinstance(verdict, dict)
            else self.labels["verification"],
        }
        info.add_metric(list(labels.values()), 1.0)
        yield from (batched, per, info)


def serve_metrics(hub: "CameraHub", port: int, host: str = "127.0.0.1") -> tuple[Any, Any, HubExporter]:
    """Serve ``hub``'s metrics at ``http://host:port/metrics`` on a daemon thread; returns ``(server, thread,
    exporter)`` (``server.shutdown()`` stops it). Port 0 picks a free port (``server.server_port``)."""
    pc = _prometheus()
    exporter = HubExporter(hub)
    server, thread = pc.start_http_server(port, addr=host, registry=exporter.registry)
    return server, thread, exporter
