"""``argparse`` for this project's command-line tools: a usage error is one line, not a usage block.

``ArgumentParser.error`` (an unknown option, a missing or malformed argument) raises :class:`UsageError`, a
``ValueError``, instead of printing the usage and exiting; the entry point reports it as every other user error:
``<prog>: <message> (see <prog> --help)`` on one line, exit status 2. ``--help`` is unchanged.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable, NoReturn, TypeVar

from .log import setup_logging


class UsageError(ValueError):
    """The command line does not fit the tool's options; the message says what and points to ``--help``."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors raise :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


__all__ = ["ArgumentParser", "USER_ERRORS", "UsageError", "one_line", "user_errors"]

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
            setup_logging()  # the one logging setup of every entry point (runtime/log.py)
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
