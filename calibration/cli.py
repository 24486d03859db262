"""Command-line error handling shared by every ``python -m ...`` entry point of calibration/, models/ and export/.

A user error (a missing or corrupt file, a bad bundle, checkpoint, calibration set or option value)
ends the program with one line on stderr, ``<prog>: <what went wrong>``, and exit status 2; never a
traceback. Programming errors (anything that is not a ``ValueError``/``OSError`` or one of the
entry point's own error types) still show their traceback. ``TIMESFORMER_DEBUG=1`` shows the
traceback of user errors too.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

__all__ = ["USER_ERRORS", "one_line", "user_errors"]

#: what counts as the user's error everywhere: every error type of this project subclasses ValueError
#: (BundleError, InputError, CheckpointError, CalibrationError, VideoReadError, SourceError, ...), and
#: OSError covers missing files, permissions and full disks.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)

F = TypeVar("F", bound=Callable[..., int])


def one_line(e: BaseException) -> str:
    """An exception as one line: its message with whitespace collapsed, or its type when it has none."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e  # KeyError's str() adds quotes
    text = " ".join(str(msg).split())
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text or type(e).__name__


def user_errors(prog: str, extra: tuple[type[BaseException], ...] = ()) -> Callable[[F], F]:
    """Decorate a ``main(argv) -> int``: user errors print ``prog: message`` and return 2; Ctrl-C returns 130."""

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except (*USER_ERRORS, *extra) as e:
                if os.environ.get("TIMESFORMER_DEBUG") == "1":
                    raise
                print(f"{prog}: {one_line(e)}", file=sys.stderr, flush=True)
                return 2

        return run  # type: ignore[return-value]

    return wrap
