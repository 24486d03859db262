"""The one ``logging`` setup of this project's command-line tools.

Library code logs through ``logging.getLogger(__name__)`` and configures nothing. Entry points call
:func:`setup_logging` (``runtime.cli_args.user_errors`` does it for every ``main``): progress lines of this project's
packages go to stderr as they are written (``[engine] 2/5 FP32 ONNX``), at INFO and up; other libraries' records
keep the standard ``LEVEL:name:message`` form at WARNING and up.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, TextIO

__all__ = ["setup_logging", "progress", "PACKAGES"]

#: this project's top-level packages: their records are progress lines, printed as they are (``__main__``: the
#: module run with ``python -m``, whose logger is named so)
PACKAGES = ("runtime", "calibration", "models", "export", "__main__")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] in PACKAGES:
            return record.getMessage()
        return super().format(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; stderr is always read anew
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Print this project's log records (``level`` and up) on stderr, one line each; idempotent."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter(logging.BASIC_FORMAT))
        root.addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)


def progress(tag: str, name: str) -> Callable[[str], None]:
    """A module's progress line writer: ``emit("3/5 ...")`` logs ``[tag] 3/5 ...`` at INFO on the logger ``name``
    (the module's ``__name__``), which :func:`setup_logging` prints on stderr."""
    log = logging.getLogger(name)

    def emit(msg: str) -> None:
        log.info("[%s] %s", tag, msg)

    return emit
