"""The worker processes an ``http`` driver starts, and their lifecycle; probing the ones it did not.

:class:`_WorkerProcesses` (part of :class:`~.executor.HttpExecutor`) brings a slot's worker up: it
starts ``python -m mrkit.backends.http.server --driver`` with the secret on its stdin
(:func:`mrkit.backends.http.wire.startup_line`), waits for the URL it reports, restarts it when it
died, stops and reaps it; a worker that was already running is probed on ``/health`` under
exponential backoff instead.
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import sys
import time

from mrkit.backends.http import wire
from mrkit.backends.http.slots import _ExecutorState, _exit_description, _NotSent, _Slot, parse_addresses
from mrkit.errors import ConfigError

logger = logging.getLogger("mrkit.http")

WORKER_PYTHON_ENV = "MRKIT_WORKER_PYTHON"
_MAX_STARTUP_FAILURES = 3  # driver-started workers dying before "ready" this many times in a row: give up
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


class _WorkerProcesses(_ExecutorState):
    """Bringing a slot's worker up (see the module docstring)."""

    def _bring_up(self, slot: _Slot) -> bool:
        return self._start_worker(slot) if slot.owned else self._probe(slot)

    def _probe(self, slot: _Slot) -> bool:
        """Check an existing worker's /health, at most as often as its backoff allows."""
        wait = slot.down_until - time.monotonic()
        if wait > 0:
            self._stopped.wait(min(wait, 0.5))
            return False
        ok, reason = self._healthy(slot)
        if ok:
            if slot.failures:
                logger.warning("HTTP worker %s answers again; sending it tasks", slot.label)
            slot.answered = True
            slot.failures = 0
            slot.down_reason = ""
            slot.last_ready = time.monotonic()
            slot.ready = True
            return True
        slot.failures += 1
        slot.down_reason = reason
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (slot.failures - 1))
        slot.down_until = time.monotonic() + delay
        if slot.failures in (1, 5) or slot.failures % 20 == 0:
            logger.warning(
                "HTTP worker %s is not answering (%s); trying again in %.1fs (attempt %d)",
                slot.label,
                reason,
                delay,
                slot.failures,
            )
        never = self._never_answered()
        if never:
            self._abort(ConfigError(never))
            return False
        with self._lock:
            unreachable = self._unreachable_locked()
            items = list(self._queue) if unreachable else []
            if unreachable:
                self._queue.clear()
        if items:
            logger.error("%s: failing %d queued attempt(s)", unreachable, len(items))
        for item in items:
            self._fail(item, unreachable)
        return False

    def _start_worker(self, slot: _Slot) -> bool:
        """Start (or restart) a driver-started worker; True once it is ready."""
        restarting = slot.started
        if restarting:
            logger.warning("restarting HTTP worker %s", slot.label)
        self._stop_process(slot, grace=0.0)
        try:
            proc, host, port = self._spawn()
        except _NotSent as exc:
            if self._closing:
                return False
            with self._lock:
                self._startup_failures += 1
                failures = self._startup_failures
            logger.warning("an HTTP worker did not start: %s", exc)
            if failures >= _MAX_STARTUP_FAILURES:
                self._abort(
                    ConfigError(
                        f"{failures} HTTP workers in a row failed to start (last one: "
                        f"{exc}); not starting more"
                    )
                )
            else:
                self._stopped.wait(min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**failures))
            return False
        with self._lock:
            self._startup_failures = 0
        slot.proc, slot.host, slot.port = proc, host, port
        slot.started = True
        slot.known.clear()
        slot.ready = True
        slot.last_ready = time.monotonic()
        logger.info(
            "%s HTTP worker pid %d at http://%s",
            "restarted" if restarting else "started",
            proc.pid,
            slot.label,
        )
        return True

    def _spawn(self) -> tuple[subprocess.Popen[bytes], str, int]:
        """Start ``python -m mrkit.backends.http.server --driver`` and wait for the URL it reports.

        The secret goes through the child's stdin (``ps`` shows command lines, not pipes); the
        child reports its URL on a second pipe, so its stdout and stderr stay the driver's, as
        with the ``processes`` executor.

        Raises:
            _NotSent: it died or did not report ready within ``timeouts.startup``.
        """
        ready_r, ready_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [self.worker_python, "-m", "mrkit.backends.http.server", wire.DRIVER_FLAG],
                stdin=subprocess.PIPE,
                pass_fds=(ready_w,),
                close_fds=True,
            )
        except OSError as exc:
            os.close(ready_r)
            raise _NotSent(f"{self.worker_python} could not be run ({type(exc).__name__}: {exc})") from None
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        try:
            # The driver's sys.path (as `processes` workers get it), so jobs pickled by reference import.
            sys_path = [os.fspath(p) for p in sys.path if isinstance(p, (str, os.PathLike))]
            assert proc.stdin is not None
            try:
                proc.stdin.write(wire.startup_line(self._secret, sys_path, ready_w))
                proc.stdin.flush()
            except OSError:
                pass  # it died at once: reading the ready pipe reports it
            line = self._read_ready(ready_r, proc)
        except BaseException:
            self._reap(proc, grace=0.0)
            raise
        finally:
            os.close(ready_r)
        host, port = parse_addresses(line)[0]
        return proc, host, port

    def _read_ready(self, fd: int, proc: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + self.timeouts.startup
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._reap(proc, grace=0.0)
                    raise _NotSent(
                        f"it did not report ready within {self.timeouts.startup:g}s and was killed"
                    )
                if self._stopped.is_set():
                    self._reap(proc, grace=0.0)
                    raise _NotSent("the executor shut down while it started")
                if not selector.select(min(left, 0.25)):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    try:
                        proc.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        pass  # it closed the pipe yet lives on: _exit_description says so
                    raise _NotSent(f"it {_exit_description(proc)} before it was ready (its stderr is above)")
                buffer += chunk
        return buffer.decode().strip()

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=grace) if grace > 0 else None
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def _stop_process(self, slot: _Slot, grace: float) -> None:
        slot.drop_connections()
        slot.ready = False
        proc, slot.proc = slot.proc, None
        if proc is not None:
            self._reap(proc, grace)
