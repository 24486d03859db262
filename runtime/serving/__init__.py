"""Serving engine bundles on Ray Serve: ``python -m runtime.serving --engine <bundle>`` (``make serve``).

Ray is optional (``pip install './runtime[serve]'``) and imported only when an application is built or
deployed; the wire format (:mod:`runtime.serving.protocol`) and the client (:class:`runtime.remote.RemoteEngine`)
need only numpy and the standard library.
"""

from .app import APP_NAME, ServeOptions, build_app, deploy, kill_replica, replica_actors, shutdown, start_ray
from .protocol import API_PREFIX, HttpError, encode_array

__all__ = [
    "APP_NAME",
    "API_PREFIX",
    "ServeOptions",
    "HttpError",
    "build_app",
    "deploy",
    "encode_array",
    "kill_replica",
    "replica_actors",
    "shutdown",
    "start_ray",
]
