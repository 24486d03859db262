"""The serving app's own Prometheus metrics: ``GET /v1/metrics`` on a replica, and Ray's metrics endpoint.

Each replica records into its own ``prometheus_client`` registry, served as Prometheus text at ``GET /v1/metrics``
(the replica that answers; every sample carries its ``replica`` label), and mirrors the same counts into
``ray.serve.metrics``, which Ray exports with its own metrics (one scrape for every replica:
``ray start --metrics-export-port``; Ray adds ``deployment`` and ``replica`` tags). ``prometheus_client`` is
optional (``pip install 'timesformer-runtime[serve,metrics]'``): without it ``/v1/metrics`` answers 501 and only
Ray's mirror records. Metrics (all prefixed ``timesformer_``):

==============================  =========  ==============================================================
``serve_requests_total``        counter    requests answered, labels ``endpoint``, ``code`` (HTTP status)
``serve_request_seconds``       histogram  request arrival to answer, label ``endpoint`` (predict, infer)
``engine_call_seconds``         histogram  time inside ``engine.infer`` per call
``engine_windows_total``        counter    clips computed
``serve_batch_size``            histogram  clips per engine call
``bundle_info``                 gauge      1; labels ``name``, ``sha256`` (the engine file's), ``backend``,
                                           ``precision``, ``verification`` (the on-device check's verdict)
==============================  =========  ==============================================================
"""

from __future__ import annotations

from typing import Any

from ..metrics import PREFIX, bundle_labels

__all__ = ["ServingMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServingMetrics:
    """One replica's metrics (see the module docstring); ``engine`` gives the bundle's identity."""

    def __init__(self, engine: Any, replica: str, max_batch: int) -> None:
        self.replica = replica
        self.labels = bundle_labels(engine)
        batch_buckets = tuple(float(b) for b in sorted({1, 2, 4, 8, 16, 32, 64, max_batch}) if b <= max_batch)
        self.registry = self._local(batch_buckets)
        self.ray = self._ray(batch_buckets)

    def _local(self, batch_buckets: tuple[float, ...]) -> Any:
        try:
            import prometheus_client as pc
        except ImportError:
            return None
        reg = pc.CollectorRegistry()
        r = ["replica"]
        self.requests = pc.Counter(
            f"{PREFIX}serve_requests", "requests answered", [*r, "endpoint", "code"], registry=reg
        )
        self.latency = pc.Histogram(
            f"{PREFIX}serve_request_seconds",
            "request arrival to answer",
            [*r, "endpoint"],
            buckets=_SECONDS,
            registry=reg,
        )
        self.engine_s = pc.Histogram(
            f"{PREFIX}engine_call_seconds", "time inside engine.infer per call", r, buckets=_SECONDS, registry=reg
        )
        self.windows = pc.Counter(f"{PREFIX}engine_windows", "clips computed", r, registry=reg)
        self.batch = pc.Histogram(
            f"{PREFIX}serve_batch_size", "clips per engine call", r, buckets=batch_buckets, registry=reg
        )
        info = pc.Gauge(f"{PREFIX}bundle_info", "the engine bundle", [*r, *self.labels], registry=reg)
        info.labels(self.replica, *self.labels.values()).set(1)
        return reg

    def _ray(self, batch_buckets: tuple[float, ...]) -> dict[str, Any] | None:
        try:
            from ray.serve import metrics as rm
        except ImportError:
            return None
        two: Any = ("endpoint", "code")  # (Ray annotates tag_keys as a 1-tuple; any tuple of names is meant)
        keys: Any = tuple(self.labels)
        try:
            out: dict[str, Any] = {
                "requests": rm.Counter(f"{PREFIX}serve_requests", "requests answered", two),
                "latency": rm.Histogram(
                    f"{PREFIX}serve_request_seconds", "request arrival to answer", list(_SECONDS), ("endpoint",)
                ),
                "engine_s": rm.Histogram(
                    f"{PREFIX}engine_call_seconds", "time inside engine.infer per call", list(_SECONDS)
                ),
                "windows": rm.Counter(f"{PREFIX}engine_windows", "clips computed"),
                "batch": rm.Histogram(f"{PREFIX}serve_batch_size", "clips per engine call", list(batch_buckets)),
            }
            out["info"] = rm.Gauge(f"{PREFIX}bundle_info", "the engine bundle", keys)
            out["info"].set(1, tags=self.labels)
            return out
        except Exception:  # noqa: BLE001 - outside a running Ray (a test, a tool): the local registry still records
            return None

    def request(self, endpoint: str, code: int, seconds: float | None) -> None:
        """One answered request (``seconds`` None: refused before it was timed)."""
        tags = {"endpoint": endpoint, "code": str(code)}
        if self.registry is not None:
            self.requests.labels(self.replica, endpoint, str(code)).inc()
            if seconds is not None:
                self.latency.labels(self.replica, endpoint).observe(seconds)
        if self.ray is not None:
            self.ray["requests"].inc(tags=tags)
            if seconds is not None:
                self.ray["latency"].observe(seconds, tags={"endpoint": endpoint})

    def engine_call(self, clips: int, seconds: float) -> None:
        """One ``engine.infer`` call of ``clips`` clips."""
        if self.registry is not None:
            self.engine_s.labels(self.replica).observe(seconds)
            self.windows.labels(self.replica).inc(clips)
            self.batch.labels(self.replica).observe(clips)
        if self.ray is not None:
            self.ray["engine_s"].observe(seconds)
            self.ray["windows"].inc(clips)
            self.ray["batch"].observe(clips)

    def render(self) -> bytes | None:
        """Prometheus text of this replica's registry, or None without prometheus_client."""
        if self.registry is None:
            return None
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
