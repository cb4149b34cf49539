"""What goes wrong with an adapter: the error every adapter tool raises, and one key that does not fit.

Kept below the reader (:mod:`.formats`) and the report (:mod:`.report`), which both use them,
so that neither has to import the other's module for its error type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import LorabenchError


class AdapterError(LorabenchError, RuntimeError):
    """The adapter cannot be read, does not fit the model, or has no effect."""

    def __init__(self, message: str, report: Optional[Any] = None):
        super().__init__(message)
        # The AdapterReport explaining the refusal, when there is one (typed loosely: the report
        # module imports this one).
        self.report = report


@dataclass
class KeyIssue:
    """A key or module that was skipped or does not fit, and why (a row of the report's table)."""

    name: str      # module name (model naming when resolved) or raw key
    reason: str
    rank: Optional[int] = None
    alpha: Optional[float] = None
