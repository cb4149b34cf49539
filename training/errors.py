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


EXIT_USER_ERROR = 2


class LorabenchError(Exception):
    """A problem with the user's input or environment; the message says where and what to do."""
