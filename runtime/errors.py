"""The runtime's two error types: a bad bundle and bad input (and the one form of a bad field's message)."""

from __future__ import annotations

from typing import Any

__all__ = ["BundleError", "InputError", "field_error", "type_name"]


class BundleError(ValueError):
    """A bundle that is missing, corrupt, tampered with or of an unsupported schema; names the file and field."""


class InputError(ValueError):
    """Input that does not fit the engine: the message says what was expected and what came."""


def type_name(v: Any) -> str:
    """A value's JSON-ish type name for a message: ``null`` for None, else the Python type's name."""
    return "null" if v is None else type(v).__name__


def field_error(where: str, field: str, expected: str, got: Any) -> BundleError:
    """``<where>: <field>: expected <expected>, got <repr of got, cut at 80 characters>``."""
    text = repr(got)
    if len(text) > 80:
        text = text[:77] + "..."
    return BundleError(f"{where}: {field}: expected {expected}, got {text}")
