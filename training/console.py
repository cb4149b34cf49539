"""A quiet, useful console: progress that suits where it is shown, and third-party noise muted.

Two things made the demo's console mostly noise:

- tqdm bars redraw with carriage returns; Ray relays a worker's output line by line (and a
  log file keeps every redraw), so one bar became hundreds of lines. :func:`progress` is a
  tqdm on an interactive terminal and otherwise one plain line per interval
  (``LORABENCH_PROGRESS_SECONDS``, default 15 s) plus a last line at the end.
- Library notices repeated by every process: DeepSpeed's "Setting accelerator to CPU",
  transformers' "requires torchvision" fallback notice, diffusers/transformers loading bars,
  torch's deprecation FutureWarning from inside DeepSpeed's all-gather, and DeepSpeed's
  "built successfully" print. :func:`quiet_third_party` mutes exactly those, in every
  process that calls it (entry points, Ray workers and actors); warnings about our inputs
  and anything else still show.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sys
import time
import warnings
from typing import Any, Iterable, Iterator, Optional

from .errors import LorabenchError

PROGRESS_SECONDS_ENV = "LORABENCH_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 15.0
_NOISE = (
    "requires torchvision (not installed)",  # transformers' image-processor fallback notice
)
_PRINT_NOISE = ("built successfully",)  # DeepSpeed's op builder print()


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in _NOISE)


def progress_seconds() -> float:
    """Seconds between progress lines off a terminal: ``LORABENCH_PROGRESS_SECONDS`` or 15."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_PROGRESS_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):  # NaN fails the comparison
        raise LorabenchError(f"{PROGRESS_SECONDS_ENV}={raw!r} is not a number of seconds >= 0; unset it "
                             f"(default {DEFAULT_PROGRESS_SECONDS:g}) or set e.g. {PROGRESS_SECONDS_ENV}=30")
    return value


def quiet_third_party() -> None:
    """Mute the known library noise in this process (idempotent; cheap after the first call).

    Also checks ``LORABENCH_PROGRESS_SECONDS`` here, at start, so a bad value is an error
    before anything loads rather than at the first progress line.
    """
    progress_seconds()
    if not _cuda_visible():
        # Read when DeepSpeed is imported: without it, every process warns that it fell back to CPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*is deprecated", category=FutureWarning)
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - both are dependencies
        return
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    transformers_logging.get_logger()  # creates the library's handler if it does not exist yet
    for handler in logging.getLogger("transformers").handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())


def _cuda_visible() -> bool:
    import torch
    return torch.cuda.is_available()


@contextlib.contextmanager
def muted_prints() -> Iterator[None]:
    """Drop known library ``print`` noise inside the block; every other print goes through.

    ``builtins.print`` itself is wrapped, not ``sys.stdout``: Ray Train replaces ``print`` in
    its workers with one that writes past ``contextlib.redirect_stdout``.
    """
    original = builtins.print

    def filtered(*objects: Any, **kwargs: Any) -> None:
        text = " ".join(str(o) for o in objects)
        if not any(n in text for n in _PRINT_NOISE):
            original(*objects, **kwargs)

    builtins.print = filtered
    try:
        yield
    finally:
        builtins.print = original


# ----------------------------------------------------------------------------- progress


def interactive() -> bool:
    """A terminal a person watches (a bar can redraw in place), not a pipe, a file or Ray's relay."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """tqdm's small API (update, set_postfix, close, iteration) printing one line per interval."""

    def __init__(self, iterable: Optional[Iterable[Any]] = None, *, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, interval: Optional[float] = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n, self.start_n = total, desc, unit, initial, initial
        self.interval = progress_seconds() if interval is None else interval
        self.postfix = ""
        self.started = self.last = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval and (self.total is None or self.n < self.total):
            self.last = now
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start_n or self.total == 0:
                self._emit()

    def _emit(self) -> None:
        elapsed = time.perf_counter() - self.started
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        where = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total is not None and rate > 0 and self.n < self.total:
            eta = f", eta {(self.total - self.n) / rate:.0f}s"
        tail = f" [{self.postfix}]" if self.postfix else ""
        # A write, not print(): Ray Train's patched print both tees and logs, so each line twice.
        sys.stderr.write(f"{self.desc}: {where}{pct}, {rate:.2f} {self.unit}/s, {elapsed:.0f}s{eta}{tail}\n")
        sys.stderr.flush()


def progress(iterable: Optional[Iterable[Any]] = None, *, total: Optional[int] = None, desc: str = "",
             unit: str = "it", initial: int = 0, disable: bool = False, leave: bool = True) -> Any:
    """A tqdm bar on a terminal, :class:`LineProgress` elsewhere, nothing with ``disable``."""
    if disable:
        return _Silent(iterable)
    if interactive():
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)


class _Silent:
    def __init__(self, iterable: Optional[Iterable[Any]]) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass
