"""One exchange with an HTTP worker: the request, the wait for its answer, and the worker's health.

:class:`~.connection._Connection` sends a request in one write and waits for the answer on a
selector, giving up when a transfer stalls; :class:`_Exchanges` (part of
:class:`~.executor.HttpExecutor`) posts one task, checks ``/health`` while it runs, and turns every
way that can end into an answer or one of
:class:`~.slots._NotSent`, :class:`~.slots._Replayed`, :class:`~.slots._Lost`. Paths, headers and
status codes are those of :mod:`mrkit.backends.http.wire`.
"""

from __future__ import annotations

import http.client
import subprocess
import time

from mrkit.backends.http import wire
from mrkit.backends.http.auth import sign_request, verify_response
from mrkit.backends.http.connection import _Connection
from mrkit.backends.http.slots import _ExecutorState, _exit_description, _Lost, _NotSent, _Replayed, _Slot
from mrkit.errors import AuthenticationError

# The worker drops connections idle for 300 s (http_server.IDLE_TIMEOUT); reconnect well before, so a
# request never races the worker closing an idle connection.
_IDLE_RECONNECT = 60.0


class _Exchanges(_ExecutorState):
    """The executor's side of one exchange (see the module docstring)."""

    def _exchange(self, slot: _Slot, body: bytes) -> tuple[int, bytes]:
        """POST one task and wait for the answer, checking the worker's health while it runs.

        Raises:
            _NotSent: the request did not get out whole (the attempt did not run).
            _Lost: the connection broke after the request was out, or the worker stopped answering.
            AuthenticationError: the worker refused our signature, or its answer did not verify.
        """
        conn = self._connection(slot)
        # The Host names the address we reached the worker at, and is signed: the worker refuses a
        # Host that is not one of its own addresses (DNS rebinding), and a request re-aimed elsewhere.
        headers = sign_request(self._secret, "POST", wire.TASK_PATH, body, host=conn.host_header)
        nonce = headers[wire.HEADER_NONCE]
        headers["Host"] = conn.host_header
        headers["Content-Type"] = wire.CONTENT_TYPE
        try:
            conn.post(wire.TASK_PATH, body, headers)
        except (BlockingIOError, TimeoutError):
            slot.drop_connections()  # SO_SNDTIMEO: it stopped reading (frozen, or cut off)
            raise _NotSent(f"it accepted no bytes of the request for {conn.stall:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            # sendall() failed, so the worker did not receive the whole request and cannot have run it.
            slot.drop_connections()
            raise _NotSent(f"the request could not be sent ({type(exc).__name__}: {exc})") from None
        self._await_answer(slot, conn)
        try:
            response = conn.getresponse()
            try:
                data = response.read()
                status = response.status
                signature = response.getheader(wire.HEADER_SIGNATURE)
            finally:
                response.close()
        except TimeoutError as exc:
            slot.drop_connections()
            raise _Lost(f"stalled: {exc} (nothing for {conn.stall:g}s)", kill=True) from None
        except (OSError, http.client.HTTPException) as exc:
            slot.drop_connections()
            raise _Lost(self._broken_connection(slot, exc)) from None
        if status == wire.CONFLICT and signature is None:
            # An unsigned 409 is the worker refusing the request itself as a replay (the signed 409
            # asks for a futures function): nothing ran, so a freshly signed copy may go anywhere.
            raise _Replayed(wire.excerpt(data))
        if status in wire.REFUSED:
            raise AuthenticationError(f"it refused our request (HTTP {status}: {wire.excerpt(data)})")
        verify_response(self._secret, status, nonce, data, signature)
        return status, data

    def _connection(self, slot: _Slot) -> _Connection:
        conn = slot.conn
        if conn is not None and (
            conn.sock is None
            or time.monotonic() - slot.last_used > _IDLE_RECONNECT
            # Readable before we asked anything: the worker closed it (end-of-file), or sent bytes
            # nobody asked for. Either way it cannot carry a request.
            or conn.readable(0)
        ):
            conn.close()
            conn = slot.conn = None
        if conn is None:
            conn = _Connection(slot.host, slot.port, timeout=self.timeouts.connect)
            conn.stall = self.timeouts.stall
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise _NotSent(f"cannot connect ({type(exc).__name__}: {exc})") from None
            peer = str(conn.sock.getpeername()[0]) if conn.sock is not None else slot.host
            conn.host_header = f"[{peer}]:{slot.port}" if ":" in peer else f"{peer}:{slot.port}"
            slot.conn = conn
        return conn

    def _await_answer(self, slot: _Slot, conn: _Connection) -> None:
        """Block until the answer starts to arrive, checking ``/health`` every ``health_interval``.

        Waiting for readability leaves the bytes for http.client to parse; each ``health_interval``
        without them is our cue to check on the worker, from this same thread, over a second
        connection (the worker serves it from another thread, so a busy worker still answers).

        Raises:
            _Lost: the worker stopped answering, its process ended, or the attempt ran too long.
        """
        t = self.timeouts
        started = time.monotonic()
        misses = 0
        # Data, end-of-file or an error all make it readable: getresponse() then says which.
        while not conn.readable(t.health_interval):
            if self._closing:
                raise _Lost("was still running the attempt when the executor shut down")
            if t.task is not None and time.monotonic() - started > t.task:
                raise _Lost(f"ran the attempt past task_timeout={t.task:g}s", kill=True)
            if slot.proc is not None and slot.proc.poll() is not None:
                raise _Lost(_exit_description(slot.proc))
            ok, reason = self._healthy(slot)
            misses = 0 if ok else misses + 1
            if misses >= t.health_misses:
                raise _Lost(f"stopped answering /health ({misses} checks in a row: {reason})", kill=True)

    def _healthy(self, slot: _Slot) -> tuple[bool, str]:
        """``(True, "")`` when the worker answers ``GET /health`` in time, else ``(False, why)``."""
        conn = slot.health
        if conn is None:
            conn = slot.health = http.client.HTTPConnection(
                slot.host, slot.port, timeout=self.timeouts.health_timeout
            )
        try:
            conn.request("GET", wire.HEALTH_PATH)
            response = conn.getresponse()
            response.read()
            response.close()
            if response.status == wire.OK:
                return True, ""
            reason = f"{wire.HEALTH_PATH} answered HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        conn.close()
        slot.health = None
        return False, reason

    def _broken_connection(self, slot: _Slot, exc: BaseException) -> str:
        if slot.proc is not None:
            try:
                slot.proc.wait(timeout=0.5)  # it probably just died: say how
            except subprocess.TimeoutExpired:
                pass
            if slot.proc.poll() is not None:
                return _exit_description(slot.proc)
        return (
            f"closed the connection mid-attempt ({type(exc).__name__}: {exc})"
            if str(exc)
            else f"closed the connection mid-attempt ({type(exc).__name__})"
        )
