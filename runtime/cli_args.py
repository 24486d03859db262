"""``argparse`` for this project's command-line tools: a usage error is one line, not a usage block.

``ArgumentParser.error`` (an unknown option, a missing or malformed argument) raises :class:`UsageError`, a
``ValueError``, instead of printing the usage and exiting; the entry point reports it as every other user error:
``<prog>: <message> (see <prog> --help)`` on one line, exit status 2. ``--help`` is unchanged.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["ArgumentParser", "UsageError"]


class UsageError(ValueError):
    """The command line does not fit the tool's options; the message says what and points to ``--help``."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors raise :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")
