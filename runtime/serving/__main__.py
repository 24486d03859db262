"""``python -m runtime.serving --engine <bundle> [--port 8000] [--replicas n|auto]``: serve until Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from ..cli_args import ArgumentParser, UsageError
from ..errors import BundleError
from .app import ServeOptions, deploy, shutdown


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m runtime.serving", description=__doc__)
    p.add_argument("--engine", required=True, help="engine bundle directory")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the HTTP proxy binds (default loopback only; 0.0.0.0 exposes it to the network)",
    )
    p.add_argument("--replicas", default="1", help="number of replicas, or 'auto' (autoscaling on queue length)")
    p.add_argument("--no-batching", action="store_true", help="one clip per engine call (no @serve.batch)")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch (default: the bundle's maximum)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per replica")
    p.add_argument("--device", default="auto")
    try:
        a = p.parse_args(argv)
    except UsageError as e:
        print(f"python -m runtime.serving: {e}", file=sys.stderr)
        return 2
    opts = ServeOptions(
        bundle=a.engine,
        replicas=a.replicas,
        batching=not a.no_batching,
        max_batch=a.max_batch,
        batch_wait_ms=a.batch_wait_ms,
        cpus_per_replica=a.cpus_per_replica,
        threads=a.threads,
        device=a.device,
        host=a.host,
        port=a.port,
    )
    try:
        opts.check()
    except (BundleError, ValueError) as e:
        print(f"make serve: {e}", file=sys.stderr)
        return 2
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        print(f"make serve: Ray Serve is not installed ({e}); pip install './runtime[serve]'", file=sys.stderr)
        return 2
    if not os.environ.get("RAY_ADDRESS"):  # a local proxy: say a busy port in one line, before Ray starts
        try:
            with socket.socket(socket.AF_INET6 if ":" in opts.host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds: TIME_WAIT is no conflict
                s.bind((opts.host, opts.port))
        except OSError as e:
            print(
                f"make serve: cannot listen on {opts.host}:{opts.port} ({e.strerror}); choose another PORT=",
                file=sys.stderr,
            )
            return 2
    try:
        url = deploy(opts)
    except Exception as e:  # noqa: BLE001 - Ray wraps the cause in its own types; report its last line only
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        print(f"make serve: the application did not start: {lines[-1].strip()}", file=sys.stderr)
        shutdown()
        return 1
    where = f"cluster {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "a local Ray (127.0.0.1)"
    print(
        f"serving {opts.bundle} at {url}/v1/predict on {where}: {opts.replicas} replica(s), "
        f"batching {'up to ' + str(opts.max_batch) if opts.batching else 'off'}; health at {url}/v1/health; "
        "Ctrl-C stops",
        flush=True,
    )
    stop = threading.Event()
    # both signals stop cleanly, also when a shell started this in the background (SIGINT then arrives ignored)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("stopping: deleting the application", flush=True)
    # on a cluster the application stays deployed only while this process lives, as it does locally
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
