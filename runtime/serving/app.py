"""The Ray Serve application: replicas of ``runtime.Engine`` behind one HTTP endpoint, with request batching.

Ray is imported inside the functions that need it (``pip install './runtime[serve]'``), so the runtime installs
and imports without it. The same code serves on a laptop, on this 2-core machine (Ray started small: no
dashboard, a small object store, loopback only) or on a cluster (``RAY_ADDRESS`` set: Ray is joined, not
started; the bundle path must then exist on every node, e.g. on a shared filesystem).

The wire format is in :mod:`runtime.serving.protocol`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engine_api import EngineAPI
from ..errors import InputError
from ..manifest import MAX_SESSION_THREADS, read_manifest
from ..prediction import top_k
from ..preprocess import preprocess_frames
from .protocol import API_PREFIX, MAX_BODY_BYTES, DecodedRequest, HttpError, decode_body
from .ray_cluster import connect_ray, replica_grpc_on_loopback, start_ray

__all__ = [
    "ServeOptions",
    "build_app",
    "bundle_id",
    "start_ray",
    "deploy",
    "shutdown",
    "replica_actors",
    "kill_replica",
    "connect_ray",
    "APP_NAME",
    "DEPLOYMENT_NAME",
]

APP_NAME = "timesformer"
DEPLOYMENT_NAME = "EngineReplica"


@dataclasses.dataclass
class ServeOptions:
    """How the bundle is served."""

    bundle: str
    replicas: int | str = 1  # a count, or "auto": autoscale between 1 and max_replicas on queue length
    max_replicas: int | None = None  # for "auto"; default: the cluster's CPUs // cpus_per_replica
    batching: bool = True  # @serve.batch across requests up to the bundle's max batch; off: one clip per call
    max_batch: int | None = None  # default: the bundle's maximum batch
    batch_wait_ms: float = 5.0  # how long a batch waits to fill once its first request came
    cpus_per_replica: float = 1.0  # Ray's CPU reservation per replica
    threads: int | None = None  # ONNX Runtime intra-op threads per replica; default max(1, int(cpus_per_replica))
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    body_timeout_s: float = 30.0  # the whole request body must arrive within this, once the headers came (408)
    max_body_bytes: int = MAX_BODY_BYTES  # larger bodies are refused (413), whatever the transfer encoding
    request_timeout_s: float = 120.0  # end to end, in Serve's proxy: a request still unanswered then gets 408

    def check(self) -> "ServeOptions":
        """Validate against the bundle's manifest; returns self with ``max_batch`` filled in."""
        manifest = read_manifest(self.bundle)  # BundleError names the file and field
        hi = int(manifest["input"]["batch"]["max"])
        if self.max_batch is None:
            self.max_batch = hi
        if not 1 <= self.max_batch <= hi:
            raise ValueError(f"max_batch: expected 1..{hi} (the bundle's batch range), got {self.max_batch}")
        if isinstance(self.replicas, str) and self.replicas != "auto":
            try:
                self.replicas = int(self.replicas)
            except ValueError:
                raise ValueError(f"replicas: expected a positive integer or 'auto', got {self.replicas!r}") from None
        if isinstance(self.replicas, int) and self.replicas < 1:
            raise ValueError(f"replicas: expected a positive integer or 'auto', got {self.replicas}")
        if not 0 <= self.batch_wait_ms <= 60_000:  # NaN passed `< 0` and reached @serve.batch
            raise ValueError(f"batch_wait_ms: expected 0..60000 milliseconds, got {self.batch_wait_ms}")
        if manifest["backend"] == "onnxruntime" and self.device != "auto":  # before: "Failed to update the deployments"
            from ..backends.onnxruntime_backend import check_device

            check_device(self.device)
        if not 0 < self.cpus_per_replica <= 1024:  # -1 and NaN failed inside Ray after it had started
            raise ValueError(f"cpus_per_replica: expected a positive number of CPUs, got {self.cpus_per_replica}")
        if self.threads is not None and not 0 <= self.threads <= MAX_SESSION_THREADS:
            raise ValueError(
                f"threads: expected 0..{MAX_SESSION_THREADS} (0: one per reserved CPU), got {self.threads}"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"port: expected 1..65535, got {self.port}")
        for name in ("body_timeout_s", "request_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name}: expected seconds in (0, 3600], got {getattr(self, name)}")
        if not 1 <= self.max_body_bytes <= MAX_BODY_BYTES:
            raise ValueError(f"max_body_bytes: expected 1..{MAX_BODY_BYTES}, got {self.max_body_bytes}")
        return self


class _Replica:
    """What one replica holds: the engine, and the code that turns a decoded request into canonical rows.

    Plain Python (no Ray) so that it can be tested and reused; :func:`build_app` wraps it in a Serve deployment.
    """

    def __init__(self, bundle: str, device: str, threads: int) -> None:
        from ..engine import Engine

        # only ONNX Runtime takes a thread count; TensorRT runs on the GPU
        backend_options: dict[str, Any] = (
            {"threads": threads} if read_manifest(bundle)["backend"] == "onnxruntime" else {}
        )
        e = Engine(bundle, device=device, **backend_options)
        self.engine: EngineAPI = e
        self._meta = {
            "bundle": Path(e.bundle_dir).name,
            "precision": e.precision,
            "input": e.manifest["input"],
            "output": e.manifest["output"],
            "clip_shape": list(e.clip_shape),
            "batch_range": list(e.batch_range),
            "input_dtype": str(e.input_dtype),
            "num_classes": e.num_classes,
            "labels": e.labels,
            "preprocess": e.preprocess.to_dict(),
            "bundle_id": bundle_id(e.manifest),
            "verification": getattr(e, "verification", None),
        }  # the stored parity on this device
        lo_c, hi_c = e.canonical_range
        span = hi_c - lo_c
        #: /infer values beyond this are not (pixel/255 - mean)/std of any video: refused with 400 before batching
        self.value_range = (lo_c - span, hi_c + span)
        cfg = e.preprocess
        # "clip" requests are already resized and cropped: the engine's own preprocessing with an identity
        # resize (short side = crop size, one crop) does the rest, so channel order and normalisation stay
        # exactly the engine's
        self.clip_cfg = dataclasses.replace(cfg, short_side=cfg.crop_size, num_crops=1)
        self.lo, self.hi = e.batch_range
        self.on_call: Any = None  # (clips, seconds) per engine call: the replica's metrics (runtime/serving/metrics.py)

    def meta(self) -> dict[str, Any]:
        """What a client needs to use the served engine (``RemoteEngine`` reads it once)."""
        return dict(self._meta)

    def decode(self, body: bytes, headers: Any, kind: str, max_batch: int) -> DecodedRequest:
        cfg = self.engine.preprocess
        return decode_body(
            body,
            headers,
            kind=kind,
            clip_shape=self.engine.clip_shape,
            num_frames=cfg.num_frames,
            crop_size=cfg.crop_size,
            input_dtype=self.engine.input_dtype,
            max_batch=max_batch,
        )

    def rows(self, req: DecodedRequest) -> np.ndarray:
        """A decoded request -> canonical rows ``(n, T, 3, H, W)`` in the engine's dtype.

        Canonical rows must be finite and within the range preprocessing can produce: checked per request, so one
        client's NaN or 3e38 gets its own 400 and never fails the batch it would have shared (issue 28 #17)."""
        if req.kind == "canonical":
            x = req.array
            if x.dtype.kind == "f":
                with np.errstate(invalid="ignore"):
                    lo, hi = float(np.min(x)), float(np.max(x))
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise HttpError(400, "body: expected finite values, got NaN/Inf")
                if lo < self.value_range[0] or hi > self.value_range[1]:
                    raise HttpError(
                        400,
                        f"body: values {lo:g}..{hi:g} are outside {self.value_range[0]:.3g}.."
                        f"{self.value_range[1]:.3g}, far beyond what (pixel/255 - mean)/std gives",
                    )
            return x
        if req.kind == "clip":
            clip = preprocess_frames(req.array, self.clip_cfg, bgr=req.bgr)
        else:
            clip = self.engine.clip_from_frames(req.array, bgr=req.bgr)
        return clip[None].astype(self.engine.input_dtype, copy=False)

    def infer_rows(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Run several requests' rows as few engine calls as the batch range allows; logits per request."""
        x = rows[0] if len(rows) == 1 else np.concatenate(rows)
        outs = []
        for s in range(0, len(x), self.hi):
            chunk = x[s : s + self.hi]
            n = len(chunk)
            if n < self.lo:  # a TensorRT profile may start above 1: pad with copies of the last row
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.lo - n, axis=0)])
            t0 = time.perf_counter()
            outs.append(self.engine.infer(chunk)[:n])
            if self.on_call is not None:
                self.on_call(n, time.perf_counter() - t0)
        logits = outs[0] if len(outs) == 1 else np.concatenate(outs)
        bounds = np.cumsum([len(r) for r in rows])[:-1]
        return np.split(logits, bounds)


def bundle_id(manifest: dict[str, Any]) -> str:
    """A short identity of a bundle's content (its files' SHA-256s): every answer carries it, so a client notices a
    server redeployed with another bundle after it read the metadata."""
    from ..files import sha256_json

    return sha256_json({name: entry["sha256"] for name, entry in manifest["files"].items()})


def _json(content: Any, status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status)


def _scaling(opts: ServeOptions, max_batch: int) -> dict[str, Any]:
    """Serve's replica count: fixed, or autoscaled on queue length for ``replicas="auto"``."""
    if opts.replicas == "auto":
        return {
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": int(opts.max_replicas or 1),
                # a replica is busy with one batch and one forming: scale out when more wait
                "target_ongoing_requests": max(2, max_batch),
            }
        }
    return {"num_replicas": int(opts.replicas)}


class _HttpReplica:
    """The HTTP side of one Serve replica: routing, limits, answers and metrics around a :class:`_Replica`.

    :func:`build_app` subclasses it with the ``@serve.batch`` method (whose batch size is known only there)."""

    core: _Replica
    max_batch: int
    max_body: int
    batching: bool

    def _setup(self, bundle: str, device: str, threads: int, max_batch: int, max_body: int, batching: bool) -> None:
        import ray
        from ray import serve

        self.max_batch, self.max_body, self.batching = max_batch, max_body, batching
        replica_grpc_on_loopback()
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        self.core = _Replica(bundle, device, threads)
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_id.unique_id
        rt = ray.get_runtime_context()
        self.actor_name = rt.get_actor_name()
        self.namespace = rt.namespace
        self.served = 0
        from .metrics import ServingMetrics

        self.metrics = ServingMetrics(self.core.engine, self.replica, max_batch)
        self.core.on_call = self.metrics.engine_call

    async def _batched(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """One request's rows through ``@serve.batch``: defined by build_app, where the batch size is known."""
        raise NotImplementedError

    async def _run(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        if self.batching:
            return await self._batched(rows)
        out = await asyncio.get_running_loop().run_in_executor(None, self.core.infer_rows, [rows])
        return out[0], len(rows)

    async def __call__(self, request: Any) -> Any:
        path = request.url.path.rstrip("/")
        endpoint = path.rsplit("/", 1)[-1] if path in (f"{API_PREFIX}/predict", f"{API_PREFIX}/infer") else None
        t_in = time.perf_counter()
        answer = await self._answer(request, path)
        if endpoint is not None:
            ok = answer.status_code == 200
            self.metrics.request(endpoint, answer.status_code, time.perf_counter() - t_in if ok else None)
        return answer

    async def _answer(self, request: Any, path: str) -> Any:
        try:
            if path in (f"{API_PREFIX}/predict", f"{API_PREFIX}/infer"):
                if request.method != "POST":
                    raise HttpError(405, f"{path}: expected POST with the array as the body, got {request.method}")
                return await self._predict(request, path)
            if path in (f"{API_PREFIX}/health", f"{API_PREFIX}/meta"):
                if request.method != "GET":
                    raise HttpError(405, f"{path}: expected GET, got {request.method}")
                if path.endswith("meta"):
                    return _json(self.core.meta())
                return _json(
                    {
                        "status": "ok",
                        "replica": self.replica,
                        "actor": self.actor_name,
                        "namespace": self.namespace,
                        "pid": os.getpid(),
                        "served": self.served,
                        "batching": self.batching,
                        "max_batch": self.max_batch,
                        **self.core.engine.describe(),
                    }
                )
            if path == f"{API_PREFIX}/metrics":
                if request.method != "GET":
                    raise HttpError(405, f"{path}: expected GET, got {request.method}")
                return self._metrics_response(path)
            raise HttpError(
                404,
                f"{request.url.path}: no such endpoint; expected {API_PREFIX}/predict, "
                f"{API_PREFIX}/infer, {API_PREFIX}/health, {API_PREFIX}/meta or "
                f"{API_PREFIX}/metrics",
            )
        except HttpError as e:
            return _json({"error": e.message}, e.status)
        except InputError as e:  # what the engine itself refuses; anything else is a server fault (500)
            return _json({"error": str(e)}, 400)

    async def _predict(self, request: Any, path: str) -> Any:
        max_body = self.max_body
        # the proxy's BodyGuard (see deploy) already bounded the body in time and size; checked again
        # here for a proxy started without it
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body:
            raise HttpError(413, f"Content-Length: {size} bytes is over the {max_body}-byte limit")
        body = await request.body()
        if len(body) > max_body:
            raise HttpError(413, f"body: {len(body)} bytes is over the {max_body}-byte limit")
        t0 = time.perf_counter()
        kind = "frames" if path.endswith("predict") else "canonical"
        req = self.core.decode(body, request.headers, kind, self.max_batch)
        rows = await asyncio.get_running_loop().run_in_executor(None, self.core.rows, req)
        logits, batch = await self._run(rows)
        self.served += 1
        out: dict[str, Any] = {
            "server_ms": round((time.perf_counter() - t0) * 1e3, 3),
            "batch": batch,
            "replica": self.replica,
            "bundle_id": self.core.meta()["bundle_id"],
        }
        if kind == "canonical":
            out["logits"] = logits.tolist()
        else:
            out["top_k"] = top_k(logits[0], self.core.engine.labels, req.top_k)
            out["logits"] = logits[0].tolist()
        return _json(out)

    def _metrics_response(self, path: str) -> Any:
        text = self.metrics.render()
        if text is None:
            raise HttpError(
                501,
                f"{path}: this replica has no prometheus_client (pip install "
                "'timesformer-runtime[metrics]'); Ray's metrics endpoint still has them",
            )
        from starlette.responses import Response

        from .metrics import CONTENT_TYPE

        return Response(text, media_type=CONTENT_TYPE)

    async def check_health(self) -> None:
        if self.core.engine is None:
            raise RuntimeError("engine closed")


def build_app(opts: ServeOptions) -> Any:
    """The Serve application (a bound deployment) for ``opts``; deploy it with :func:`deploy`."""
    from ray import serve

    opts.check()
    assert opts.max_batch is not None  # check() filled it in
    bundle = str(Path(opts.bundle).resolve())
    max_batch = int(opts.max_batch)
    max_body = int(opts.max_body_bytes)
    batching = opts.batching
    threads = opts.threads or max(1, int(opts.cpus_per_replica))
    device = opts.device

    deployment = serve.deployment(
        name=DEPLOYMENT_NAME,
        ray_actor_options={"num_cpus": opts.cpus_per_replica},
        # Serve's own limit must admit a full batch plus the next one forming
        max_ongoing_requests=max(8, 2 * max_batch),
        graceful_shutdown_timeout_s=2,
        graceful_shutdown_wait_loop_s=0.5,
        health_check_period_s=2,
        health_check_timeout_s=10,
        **_scaling(opts, max_batch),
    )

    class EngineReplica(_HttpReplica):
        def __init__(self) -> None:
            self._setup(bundle, device, threads, max_batch, max_body, batching)

        @serve.batch(
            max_batch_size=max_batch,
            batch_wait_timeout_s=opts.batch_wait_ms / 1e3,
            batch_size_fn=lambda items: sum(len(r) for r in items),
        )
        async def _batched(self, items: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
            # inference in a thread: the event loop keeps taking requests, and the next batch forms meanwhile
            outs = await asyncio.get_running_loop().run_in_executor(None, self.core.infer_rows, items)
            n = sum(len(r) for r in items)
            return [(o, n) for o in outs]

    return deployment(EngineReplica).bind()


def deploy(opts: ServeOptions, wait: bool = True) -> str:
    """Start Ray (or join it), start Serve's HTTP proxy on ``opts.host:opts.port`` and deploy; returns the URL."""
    import ray
    from ray import serve

    opts.check()
    from .guard import install

    # Serve's proxy bounds each request: the body in time and size before a replica sees it (BodyGuard, installed
    # through the environment a local Ray starts with), the whole request end to end (request_timeout_s), idle
    # keep-alive connections (keep_alive_timeout_s)
    install(opts.max_body_bytes, opts.body_timeout_s)
    start_ray()
    cpus = ray.cluster_resources().get("CPU", 0)
    need = (opts.replicas if isinstance(opts.replicas, int) else 1) * opts.cpus_per_replica
    if need > cpus and not os.environ.get("RAY_ADDRESS"):  # a local Ray cannot grow: Serve would wait forever
        n = need / opts.cpus_per_replica
        raise ValueError(
            f"replicas: {n:g} x {opts.cpus_per_replica:g} CPU need {need:g} CPUs, this Ray has {cpus:g}; "
            f"use fewer replicas or --cpus-per-replica {int(cpus / n * 100) / 100:g}"
        )
    if opts.replicas == "auto" and not opts.max_replicas:
        opts.max_replicas = max(1, int(ray.cluster_resources().get("CPU", 1) // opts.cpus_per_replica))
    serve.start(
        http_options={
            "host": opts.host,
            "port": opts.port,
            "request_timeout_s": opts.request_timeout_s,
            "keep_alive_timeout_s": 5,
        },
        proxy_location="HeadOnly",
    )
    serve.run(build_app(opts), name=APP_NAME, route_prefix="/", blocking=False)
    if wait:
        _wait_running()
    host = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
    return f"http://{host}:{opts.port}"


def _wait_running(timeout_s: float = 120.0) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        st = serve.status().applications.get(APP_NAME)
        if st is not None and str(st.status).endswith("RUNNING"):
            return
        if st is not None and str(st.status).endswith("DEPLOY_FAILED"):
            raise RuntimeError(f"Serve application {APP_NAME!r} failed to deploy: {st.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Serve application {APP_NAME!r} not running after {timeout_s:.0f} s "
                f"(status {getattr(st, 'status', None)})"
            )
        time.sleep(0.2)


def shutdown() -> None:
    """Take the application down: on a local Ray, Serve and Ray stop; on a joined cluster (``RAY_ADDRESS``) only
    this application is deleted and the driver disconnects, leaving the cluster's other applications alone."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()


def replica_actors(url: str, tries: int = 40) -> dict[str, tuple[str, str]]:
    """The replicas answering at ``url``: ``{replica id: (actor name, namespace)}`` read from their health endpoint
    (the proxy spreads the calls, so a few calls find every replica)."""
    from ..remote import RemoteEngine

    client = RemoteEngine(url, fetch_meta=False, retries=0)
    found: dict[str, tuple[str, str]] = {}
    for _ in range(tries):
        h = client.health()
        found[h["replica"]] = (h["actor"], h["namespace"])
    return found


def kill_replica(url: str) -> str:
    """``ray.kill`` one replica of the application at ``url`` (Serve starts a replacement); returns its id.

    A process not yet connected to Ray joins ``RAY_ADDRESS`` (or the local cluster) for the call."""
    import ray

    joined = connect_ray()
    try:
        return _kill_one(url)
    finally:
        if joined:
            ray.shutdown()  # disconnects this driver; the cluster and the application keep running


def _kill_one(url: str) -> str:
    import ray

    replicas = replica_actors(url)
    if not replicas:
        raise RuntimeError(f"{url}: no replica answered the health endpoint")
    rid, (name, ns) = sorted(replicas.items())[0]
    for namespace in ("serve", ns):  # Serve keeps its replicas in its own namespace ("serve" since Ray 2.x)
        try:
            handle = ray.get_actor(name, namespace=namespace)
            break
        except ValueError:
            continue
    else:
        raise RuntimeError(f"replica actor {name!r} not found in namespace 'serve' or {ns!r}")
    ray.kill(handle, no_restart=True)
    return rid
