"""Decode the next batches on a background thread while the model computes.

Each batch travels with a snapshot of the stream position and skip counts taken right after it
was assembled, so a checkpoint records what the model actually *consumed*, not what the
prefetcher has read ahead: resume stays exact whatever the prefetch depth.
Errors in the producer (e.g. a corrupt shard) are re-raised in the consumer, never swallowed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

_DONE = object()


@dataclass
class Prefetched:
    batch: dict[str, Any]
    data_state: dict[str, Any]
    skip_state: dict[str, Any]


class Prefetcher:
    """Iterator over ``Prefetched`` items produced by a daemon thread, at most ``depth`` ahead."""

    def __init__(self, batches: Iterator[dict[str, Any]], snapshot: Callable[[], tuple[dict, dict]],
                 depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("prefetch depth must be >= 1")
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches, snapshot),
                                        name="lorabench-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[dict[str, Any]], snapshot: Callable[[], tuple[dict, dict]]) -> None:
        try:
            for batch in batches:
                data_state, skip_state = snapshot()
                if not self._put(Prefetched(batch, data_state, skip_state)):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Prefetched:
        item = self._q.get()
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
