"""What every command-line entry point shares: an expected failure (a bad value, a
missing or corrupt file, an unusable device or output directory) ends the command
with one line naming the problem and exit code 2; anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, TypeVar

from .integrity import CheckpointError

__all__ = ["ArgumentParser", "EXIT_USAGE", "SETUP_ERRORS", "RUN_ERRORS", "attempt", "fail"]

EXIT_USAGE = 2
# while reading the command line, config and files and building what a run needs
SETUP_ERRORS: tuple[type[BaseException], ...] = (KeyError, ValueError, OSError)
# once running: only what the outside world causes (a full or unwritable disk, damaged files)
RUN_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, OSError)

T = TypeVar("T")


def _one_line(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    text = " ".join(str(text).split())  # one line, whatever the message held
    return text or type(e).__name__


def fail(message: str | BaseException, prog: str = "unigrpo") -> int:
    """Print ``prog: error: message`` on one line to stderr; return the exit code."""
    text = _one_line(message) if isinstance(message, BaseException) else message
    print(f"{prog}: error: {text}", file=sys.stderr)
    return EXIT_USAGE


def attempt(step: Callable[[], T], expected: tuple[type[BaseException], ...], prog: str) -> tuple[T | None, int]:
    """``(step(), 0)``; or, when ``step`` raises an ``expected`` exception, ``(None, 2)``
    with the one line printed."""
    try:
        return step(), 0
    except expected as e:
        return None, fail(e, prog)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (argparse's own prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (--help lists the options)", self.prog)
        raise SystemExit(EXIT_USAGE)
