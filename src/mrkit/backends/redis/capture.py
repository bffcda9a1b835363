"""Capture of user output per task, for the job's log stream.

A task of an asynchronous Redis job runs in a worker that serves many jobs; what the user's functions
print (``sys.stdout`` / ``sys.stderr``) and log (``logging``) belongs to that task's job, and goes
to the job's log stream (``mrkit logs ID``). :func:`install_capture` replaces ``sys.stdout`` and
``sys.stderr`` once per process with proxies that pass every write through, except in a thread inside
:func:`capture_output`, whose writes (and log records) are kept, at most ``CAPTURE_LIMIT``
characters per stream and task.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CAPTURE_LIMIT = 64 * 1024  # characters of user output kept per task and stream

_capture = threading.local()
_install_lock = threading.Lock()
_installed = False


class _Proxy(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: a thread capturing a task gets its writes, others pass."""

    def __init__(self, original: Any, kind: str) -> None:
        self._original, self._kind = original, kind

    def write(self, text: str) -> int:
        buffers = getattr(_capture, "buffers", None)
        if buffers is None:
            return int(self._original.write(text))
        buffers.add(self._kind, text)
        return len(text)

    def flush(self) -> None:
        if getattr(_capture, "buffers", None) is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._original, "encoding", "utf-8"))

    def fileno(self) -> int:
        return int(self._original.fileno())


class _CaptureHandler(logging.Handler):
    """Routes a task's log records to its capture; outside tasks, warnings still reach stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        buffers = getattr(_capture, "buffers", None)
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if buffers is not None:
            buffers.add("log", line)
        elif record.levelno >= logging.WARNING:
            sys.__stderr__.write(line) if sys.__stderr__ else None


class Captured:
    """User output of one task, per stream, truncated at ``CAPTURE_LIMIT`` characters each."""

    def __init__(self) -> None:
        self.parts: dict[str, list[str]] = {}
        self.sizes: dict[str, int] = {}

    def add(self, kind: str, text: str) -> None:
        size = self.sizes.get(kind, 0)
        if size < CAPTURE_LIMIT:
            self.parts.setdefault(kind, []).append(text[: CAPTURE_LIMIT - size])
        self.sizes[kind] = size + len(text)

    def items(self) -> Iterator[tuple[str, str]]:
        for kind, parts in self.parts.items():
            text = "".join(parts)
            if self.sizes[kind] > CAPTURE_LIMIT:
                text += f"\n[… {self.sizes[kind] - CAPTURE_LIMIT} more characters not kept]"
            yield kind, text


def install_capture() -> None:
    """Install the stdout/stderr proxies and the logging handler in this process (once)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        sys.stdout = _Proxy(sys.stdout, "stdout")  # type: ignore[assignment]
        sys.stderr = _Proxy(sys.stderr, "stderr")  # type: ignore[assignment]
        handler = _CaptureHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level > logging.INFO:
            root.setLevel(logging.INFO)  # so that a task's logging.info() is captured too
        _installed = True


@contextmanager
def capture_output() -> Iterator[Captured]:
    """Capture this thread's user output (after :func:`install_capture`) for the block."""
    captured = Captured()
    previous = getattr(_capture, "buffers", None)
    _capture.buffers = captured
    try:
        yield captured
    finally:
        _capture.buffers = previous
