"""The HTTP executor's client connection to a worker: one write per request, stall-bounded transfers.

Used by :mod:`.exchange`; kept apart because it is socket plumbing under :mod:`http.client`, not the
executor's logic.
"""

from __future__ import annotations

import http.client
import io
import os
import selectors
import socket
import struct
from typing import Any


def _set_stall_timeout(sock: socket.socket, seconds: float) -> None:
    """Make a blocking send or receive on ``sock`` fail after ``seconds`` without progress.

    SO_SNDTIMEO/SO_RCVTIMEO bound each system call in the kernel, so the socket stays in blocking
    mode and the normal path costs no extra system call (a Python-level timeout would add a poll
    before every send and receive). ``sendall`` keeps going while bytes move, and raises once
    ``seconds`` pass with none accepted.
    """
    if os.name == "nt":
        value = struct.pack("L", max(1, int(seconds * 1000)))  # a DWORD of milliseconds
    else:
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))  # struct timeval
    for option in (socket.SO_SNDTIMEO, socket.SO_RCVTIMEO):
        sock.setsockopt(socket.SOL_SOCKET, option, value)


class _StallReader(io.RawIOBase):
    """The raw stream an answer is read from: a receive that timed out raises TimeoutError.

    http.client reads through ``socket.SocketIO``, which returns None when a receive would block
    (its non-blocking-socket case); after SO_RCVTIMEO expired it would then take a stalled answer
    for a short one, or return None as its body.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            raise TimeoutError("its answer stopped arriving midway") from None


class _Response(http.client.HTTPResponse):
    """An HTTPResponse read through :class:`_StallReader`."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the SocketIO reader http.client made; it holds no data yet
        self.fp = io.BufferedReader(_StallReader(sock))


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection that sends a request's headers and body in one write, and can wait for input.

    http.client writes headers and body separately; the worker would then wake up for the headers,
    block, and wake up again for the body. :meth:`post` collects what ``request()`` sends and writes
    it once. :meth:`readable` waits for the answer with one ``epoll``/``kqueue`` call on a selector
    kept per connection, leaving the socket in blocking mode: toggling timeouts around a peek would
    cost several system calls per task, each one a chance for another driver thread to take the GIL.
    """

    response_class = _Response
    host_header = ""  # the signed Host: the worker's address as connected, and its port
    stall = 0.0  # seconds a send or receive may make no progress (0: no bound)
    _corked: list[bytes] | None = None
    _selector: selectors.BaseSelector | None = None

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock.settimeout(None)  # an answer takes as long as its task; health checks bound the wait
        if self.stall > 0:
            _set_stall_timeout(self.sock, self.stall)  # ...but once it moves, it must keep moving
        if self._selector is not None:
            self._selector.close()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._selector is not None:
                self._selector.close()
                self._selector = None

    def readable(self, timeout: float) -> bool:
        """True when bytes, or end-of-file, wait to be read; waits at most ``timeout`` seconds."""
        selector = self._selector
        return True if selector is None else bool(selector.select(timeout))

    def send(self, data: Any) -> None:
        if self._corked is not None and isinstance(data, bytes):
            self._corked.append(data)
        else:
            super().send(data)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        self._corked = []
        try:
            self.request("POST", path, body, headers)
            data = b"".join(self._corked)
        finally:
            self._corked = None
        super().send(data)
