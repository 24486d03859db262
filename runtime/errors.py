"""The runtime's two error types: a bad bundle and bad input."""
from __future__ import annotations

__all__ = ["BundleError", "InputError"]


class BundleError(ValueError):
    """A bundle that is missing, corrupt, tampered with or of an unsupported schema; names the file and field."""


class InputError(ValueError):
    """Input that does not fit the engine: the message says what was expected and what came."""
