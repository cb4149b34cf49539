"""Crash-safe file writes: write-then-rename, and append-only JSON-lines logs.

A process can be killed (OOM killer, node loss, preemption) or run out of space at any
byte. Two rules keep every file a resumed run reads usable:

* A file that is rewritten whole is written to a temporary sibling, flushed, and renamed
  over the target (:func:`atomic_write_text`, :func:`atomic_write_bytes`): readers see the
  old or the new content, never half of it.
* Content hashes (:func:`sha256_file`, :func:`sha256_json`) are computed here, once, for
  every manifest, cache key and provenance record.
* An append-only ``.jsonl`` log can only lose its *last* line to a crash (a torn, partial
  line). :func:`read_jsonl` tolerates exactly that and reports it; a damaged line anywhere
  else is corruption and an error naming ``file:line``. :func:`append_jsonl` cuts a torn
  tail off before appending, so a torn line never ends up in the middle of a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Union

from training.errors import LorabenchError

PathLike = Union[str, Path]


class CorruptFileError(LorabenchError, ValueError):
    """A file the run wrote earlier is damaged where a crash cannot have damaged it."""


# ------------------------------------------------------------------ whole-file writes


@contextlib.contextmanager
def atomic_file(path: PathLike, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an error (and is
    removed otherwise): for outputs too large to build in memory (e.g. a tar shard)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temporary sibling, fsync, rename)."""
    with atomic_file(path, fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: PathLike, obj: Any, *, indent: Optional[int] = 2, sort_keys: bool = False,
                      fsync: bool = True) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (non-finite floats refused, not written as NaN)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n",
                      fsync=fsync)


# ------------------------------------------------------------------ content hashes


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints and weights can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(data: Any) -> str:
    """Hex sha256 of ``data`` as canonical JSON (sorted keys): stable across key order and whitespace."""
    return sha256_bytes(json.dumps(data, sort_keys=True, default=str).encode())


def human_bytes(n: float) -> str:
    """``512 bytes``, ``1.5 KiB`` ... ``2.0 TiB``: sizes in messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def existing_ancestor(path: PathLike) -> Path:
    """``path`` itself if it exists, else its deepest existing parent (``/`` at worst)."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def fsync_dir(folder: PathLike) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


# ------------------------------------------------------------------ append-only JSON lines


@dataclass
class JsonlContents:
    """The complete records of a ``.jsonl`` file and, if the last line was torn, what was cut."""

    path: Path
    records: list[Any] = field(default_factory=list)
    torn: Optional[bytes] = None      # the partial last line (no newline or not JSON), if any
    good_bytes: int = 0               # length of the file up to and including the last good line

    def describe_torn(self, limit: int = 60) -> str:
        """One line for the log: what was dropped from where."""
        assert self.torn is not None
        text = self.torn.decode("utf-8", errors="replace")
        shown = text if len(text) <= limit else text[:limit] + "..."
        return (f"{self.path}: dropped a torn last line ({len(self.torn)} bytes, left by a run that "
                f"stopped while writing it): {shown!r}")


def read_jsonl(path: PathLike) -> JsonlContents:
    """Parse a JSON-lines file, tolerating a torn *last* line only.

    The last line is torn when it does not parse (a partial write, or the zero bytes some
    filesystems leave after a power loss); it is returned in ``.torn`` and not in
    ``.records``. A complete last line that only lacks its newline is kept. Any other line
    that does not parse raises :class:`CorruptFileError` naming ``file:line``. Blank lines
    are skipped. A missing file reads as empty.
    """
    path = Path(path)
    out = JsonlContents(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out
    lines = raw.split(b"\n")
    # ``raw`` ending in "\n" gives a last empty element: the last *line* is the one before it.
    complete_tail = lines[-1] == b""
    if complete_tail:
        lines.pop()
    offset = 0
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        end = offset + len(line) + (0 if last and not complete_tail else 1)
        if line.strip(b" \t\r"):
            try:
                out.records.append(json.loads(line))
            except (UnicodeDecodeError, ValueError) as e:
                if not last:
                    raise CorruptFileError(
                        f"{path}:{number}: not valid JSON ({e}); only the last line of an append-only "
                        f"log can be torn by a crash, so this file was damaged otherwise: fix or delete "
                        f"line {number}, or move the file aside") from None
                out.torn = line
                return out  # good_bytes stays at the end of the previous line
        out.good_bytes = end
        offset = end
    return out


def repair_jsonl(path: PathLike) -> Optional[JsonlContents]:
    """Cut a torn last line off ``path`` in place; returns what was read if something was cut.

    A complete last record that lacks only its newline gets the newline.
    """
    path = Path(path)
    contents = read_jsonl(path)
    if contents.torn is not None:
        with open(path, "r+b") as f:
            f.truncate(contents.good_bytes)
            f.flush()
            os.fsync(f.fileno())
        return contents
    if _ends_torn(path):  # the last record is complete, only its newline was lost
        with open(path, "ab") as f:
            f.write(b"\n")
    return None


def append_jsonl(path: PathLike, record: Any) -> Optional[JsonlContents]:
    """Append ``record`` as one line; first cut off a torn last line left by an earlier crash.

    Returns the repair (see :func:`repair_jsonl`) when one was needed, so the caller can say
    so once. The line is written with one ``write`` and flushed, not fsynced: a kill loses at
    most a torn tail, which the next append or read handles.
    """
    path = Path(path)
    repaired = None
    if _ends_torn(path):
        repaired = repair_jsonl(path)
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        f.write(line)
    return repaired


def write_jsonl(path: PathLike, records: list[Any]) -> None:
    """Replace ``path`` with ``records``, one per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _ends_torn(path: Path) -> bool:
    """True when a non-empty file does not end with a newline (the cheap check before appending)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False
