"""Raw samples of one shard: webdataset's tar grouping, with every way a shard breaks named.

A raw sample is a dict of still undecoded member bytes; decoding is the stream's job
(:mod:`training.data.pipeline`), counting them the index's (:mod:`training.data.index`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from webdataset import tariterators

from .errors import DataError, ShardError, shard_error_reason

#: Leading bytes of gzip, bzip2 and xz streams: truncation of these is reported by their codecs.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")


class EndCheckingReader:
    """Read-through wrapper that tells whether a tar stream ended with its end marker.

    Python's tarfile (and so webdataset) stops silently when a stream ends exactly at a
    512-byte block boundary, so a shard cut short there would just look smaller. A complete
    tar ends with zero blocks; data running out on a non-zero block means truncation.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.head = b""
        self.tail = b""
        self.hit_eof = False

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if len(self.head) < 8:
            self.head = (self.head + data)[:8]
        if not data or (n is not None and 0 < len(data) < n):
            self.hit_eof = True
        self.tail = (self.tail + data)[-512:]
        return data

    def close(self) -> None:
        self.raw.close()

    def truncated(self) -> bool:
        compressed = self.head.startswith(COMPRESSED_MAGIC)
        return self.hit_eof and not compressed and self.tail != bytes(512)


def raw_samples(shard: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard, in tar order: ``__key__``, ``__url__`` (the shard), ``__index__``
    (the sample's position in the shard, from 0) and the member bytes.

    Raises :class:`ShardError` naming the shard, with the reason (see
    :data:`~training.data.errors.BAD_SHARD_REASONS`), when it cannot be read to its end.
    """
    completed = False
    source: dict[str, Any] = {}
    try:
        # url_opener/gopen open local paths, pipe: commands and URLs alike. Only the tar
        # iterators are used: webdataset's decoders (which include pickle) are never involved.
        for source in tariterators.url_opener([{"url": shard}]):
            reader = source["stream"] = EndCheckingReader(source["stream"])
            files = tariterators.tar_file_expander([source])
            for index, sample in enumerate(tariterators.group_by_keys(files)):
                sample["__index__"] = index
                yield sample
            if reader.truncated():
                raise ShardError(
                    f"shard {shard} ends without the tar end-of-archive marker: it is truncated "
                    f"(e.g. an interrupted copy or download); re-create it or remove it from data.shards.",
                    shard, "shard_truncated")
        completed = True
    except DataError:
        raise
    except Exception as exn:
        # webdataset appends the stream and URL to exception args; keep just the message.
        detail = exn.args[0] if exn.args and isinstance(exn.args[0], str) else str(exn)
        detail = " ".join(detail.split(" @ <", 1)[0].split())
        reason = shard_error_reason(exn)
        stream, source["stream"] = source.get("stream"), None
        try:
            if stream is not None:
                stream.close()  # a failing pipe: command shows up here (its output looks empty)
        except Exception as close_exn:
            reason, detail = "shard_unreadable", f"{detail} ({close_exn})"
        raise ShardError(
            f"cannot read shard {shard} ({reason}): {type(exn).__name__}: {detail}. The file is missing, "
            f"unreadable, truncated or not a tar archive (or its pipe: command failed); re-create it or "
            f"remove it from data.shards.", shard, reason) from exn
    finally:
        stream = source.get("stream")
        if stream is not None:
            try:
                stream.close()  # pipe: streams report the command's exit status here
            except Exception as exn:
                # On an early stop (GeneratorExit) the command was cut off on purpose.
                if completed:
                    raise ShardError(f"closing shard {shard} failed: {exn}", shard, "shard_unreadable") from exn
