"""The one error family for problems the user must fix.

Every entry point (``lorabench ...``, ``python -m training``, ``python -m cluster.train``,
``python -m cluster.eval``) catches :class:`LorabenchError` in one handler
(:func:`training.errors.run_main`), prints one line naming the file, key or field and what
to do, and exits with :data:`EXIT_USER_ERROR`. Anything else is a bug and keeps its
traceback. ``--debug`` or ``LORABENCH_DEBUG=1`` shows the traceback of user errors too.

Modules define their own subclasses (ConfigError, DataError, AdapterError, ...) so callers
can still tell them apart; this module imports nothing heavy, so the handler costs nothing.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Iterator, Optional


EXIT_USER_ERROR = 2


class LorabenchError(Exception):
    """A problem with the user's input or environment; the message says where and what to do."""


class MissingFileError(LorabenchError, FileNotFoundError):
    """A file or folder the user named does not exist (the message says which key named it)."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it, each once: what it wraps first, then its
    ``__cause__`` and ``__context__``.

    Ray re-raises a remote exception as a RayTaskError (``.cause`` holds the original); Ray
    Train raises a WorkerGroupError whose ``worker_failures`` maps each rank to its exception
    (rank 0's first here), or a ControllerError with ``controller_failure``.
    """
    seen: set[int] = set()
    todo: list[Optional[BaseException]] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):  # a RayTaskError: the original first
            todo.insert(0, cause)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo[:0] = [failures[r] for r in sorted(failures)]
        controller = getattr(e, "controller_failure", None)
        if isinstance(controller, BaseException):
            todo.insert(0, controller)
        yield e
        todo.extend([e.__cause__, e.__context__])


def user_error(exc: BaseException) -> "LorabenchError | None":
    """The LorabenchError behind ``exc``, also when Ray wrapped it (worker or task failures).

    A Ray wrapper's ``str`` carries the remote tracebacks, so the original is what the user
    should see (a RayTaskError may itself be an instance of the original's class: skipped).
    """
    for e in exception_chain(exc):
        if isinstance(e, LorabenchError) and not hasattr(e, "cause"):
            return e
    return None


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("LORABENCH_DEBUG", "").strip().lower() in {"1", "true", "yes"}


def run_entry(prog: str, fn: Callable[[], int], debug: bool = False) -> int:
    """Run an entry point's body: a user error is one line on stderr and exit code 2.

    Tracebacks of user errors only with ``debug`` (``--debug``) or ``LORABENCH_DEBUG=1``;
    any other exception propagates with its traceback, because it is a bug.
    """
    try:
        return fn()
    except BaseException as e:  # noqa: B902 - re-raised below unless it is a user error
        err = user_error(e) if isinstance(e, Exception) else None
        if err is None:
            raise
        if debug_enabled(debug):
            traceback.print_exception(e)
        print(f"{prog}: error: {strip_remote_traceback(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR


def strip_remote_traceback(message: str) -> str:
    """The message as given, but never a remote traceback: cut at Ray's traceback marker."""
    for marker in ("\nTraceback (most recent call last)", "\n\nTraceback"):
        if marker in message:
            message = message.split(marker, 1)[0]
    return message.rstrip()


DEBUG_FLAG = "--debug"


def split_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove the global ``--debug`` flag wherever it is on the command line."""
    return [a for a in argv if a != DEBUG_FLAG], DEBUG_FLAG in argv
