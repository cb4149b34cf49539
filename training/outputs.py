"""Pre-flight check that an output folder can be created and written, before anything loads.

A run that loads a 14B model for ten minutes and then fails on ``mkdir`` wastes the
allocation; this check costs one probe file. It creates no folders: it finds the deepest
existing ancestor, refuses a file in the way, and probes that ancestor with a temporary
file that is removed at once (``os.access`` alone is not enough: root passes it on a
read-only filesystem).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from training.errors import LorabenchError
from training.fsio import existing_ancestor


class OutputDirError(LorabenchError, OSError):
    """An output folder that cannot be created or written."""


def check_writable_dir(path: Union[str, Path], key: str) -> Path:
    """Raise :class:`OutputDirError` naming ``key`` unless ``path`` can be created and written."""
    target = Path(path).expanduser().absolute()
    existing = existing_ancestor(target)
    if not existing.is_dir():
        where = "is" if existing == target else f"is under {existing}, which is"
        raise OutputDirError(f"{key}={str(path)!r} {where} a file, not a folder: choose another {key}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lorabench-write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(f"{key}={str(path)!r}: cannot write into {existing} ({e.strerror or e}); "
                             f"choose a writable {key}") from None
    return target
