"""The Ray side of serving: start a small local Ray on loopback only (or join ``RAY_ADDRESS``), keep its token file
private, keep a replica's gRPC server on loopback, and attach a driver to a running cluster.

:mod:`runtime.serving.app` (which re-exports :func:`start_ray` and :func:`connect_ray`) builds and deploys the
application on top of it. Ray is imported inside the functions (``pip install './runtime[serve]'``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["start_ray", "connect_ray", "replica_grpc_on_loopback"]


def start_ray(num_cpus: int | None = None, object_store_mb: int = 100) -> bool:
    """Join the cluster at ``RAY_ADDRESS`` when set, else start a small local Ray on the loopback interface.

    Returns True when this call started (or joined) Ray, False when it was already initialised.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves this machine
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return True
    _private_auth_token()
    _loopback_only()
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        object_store_memory=object_store_mb << 20,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    return True


def _loopback_only() -> None:
    """Make a local Ray's node address 127.0.0.1, so that its servers (GCS, raylet, workers, the dashboard agent and
    its Prometheus metrics port, the runtime-env agent) listen on loopback only (issue 28 #6).

    Ray turns an explicit ``_node_ip_address="127.0.0.1"`` into the machine's network address, and binds its agents
    to all interfaces unless the node address is loopback; its single-machine mode (the default on Windows and
    macOS, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) keeps the node on 127.0.0.1. The variable is read when
    ``ray._private.ray_constants`` is imported, so the attribute is set as well for a Ray imported earlier."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # another Ray layout: the environment variable still applies
        pass


def replica_grpc_on_loopback() -> None:
    """In a replica of a local Ray: its inter-deployment gRPC server on 127.0.0.1, not on every interface.

    Serve binds that server to ``[::]:0`` unconditionally (``ray.serve._private.replica``, after the user's
    ``__init__``); on a local Ray (:func:`_loopback_only`, inherited through the environment) the address is rewritten
    to loopback, where the node's other servers are. A Ray without that hook is left as it is (the loopback test
    then names the port)."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0" or os.environ.get("RAY_ADDRESS"):
        return
    try:
        import ray.serve._private.replica as replica_mod
    except ImportError:
        return
    bind = getattr(replica_mod, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "_loopback", False):
        return

    def loopback(server: Any, address: str) -> Any:
        return bind(server, "127.0.0.1:0" if address == "[::]:0" else address)

    loopback._loopback = True  # type: ignore[attr-defined]
    replica_mod.add_port_to_grpc_server = loopback


def _private_auth_token() -> None:
    """Ray's token file (``~/.ray/auth_token``) readable by this user only: created here with mode 0600 when absent
    (Ray then reads it), or narrowed to 0600 when it is ours and readable by others (Ray writes it 0644)."""
    import secrets
    import stat

    path = Path.home() / ".ray" / "auth_token"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
                os.chmod(path, 0o600)
            return
        with open(fd, "w") as f:
            f.write(secrets.token_hex(32))  # as ray.get-auth-token --generate writes it: 256 random bits in hex
    except OSError as e:
        logging.getLogger(__name__).warning("cannot make %s private (%s); Ray keeps its own", path, e)


def connect_ray() -> bool:
    """Attach this process to the running cluster (``RAY_ADDRESS``, or the local one ``make serve`` started) unless
    it is connected already; returns True when it connected (the caller then disconnects with ``ray.shutdown()``).
    Call it from the main thread: Ray installs signal handlers there."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False, logging_level=logging.WARNING)
    return True
