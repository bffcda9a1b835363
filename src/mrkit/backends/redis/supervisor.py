"""The ``mrkit worker redis://…`` command: a supervisor of K task processes.

:func:`serve` checks the connection, then runs a :class:`Supervisor` of ``concurrency`` task
processes (or, with one, the worker loop in this process). Each task process is a
:class:`~mrkit.backends.redis.worker.RedisWorker` and a process group leader; the supervisor
forwards each SIGTERM/SIGINT to them once (they ignore the terminal's own SIGINT), beats their
liveness in ``mrkit:workers`` for them, and replaces one that dies. Before each attempt a task
process writes the entry it runs to a slot shared with the supervisor, which reports the attempt as
failed (``WorkerCrashed``, naming the exit code or signal) if the process dies under it. A task
process whose supervisor is gone stops after its task.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mrkit.backends.redis.capture import install_capture
from mrkit.backends.redis.wire import (
    GROUP,
    HANDBACK_IDLE_MS,
    QUEUES,
    WORKER_BEAT,
    WORKERS,
    beat,
    now_ms,
    resolve_secret,
    unpack,
)
from mrkit.backends.redis.worker import SLOT_BYTES, RedisWorker
from mrkit.errors import ConfigError, StorageError
from mrkit.execution.watchdog import crash_failure
from mrkit.model.task import TaskSpec
from mrkit.storage.redis import RedisURL, connect, redact


def serve(
    url: str,
    *,
    concurrency: int | None = None,
    burst: bool = False,
    name: str | None = None,
    secret_file: str | None = None,
) -> None:
    """Run a supervisor of ``concurrency`` task processes on the Redis at ``url`` until stopped (or
    drained in burst mode).

    Each task process is one consumer (a :class:`RedisWorker`) and a process group leader. The
    supervisor replaces a task process that died: one whose attempt timed out (its watchdog reported
    it, then ended the process and its group), one whose user code ended it (``os._exit``, a signal),
    or one killed from outside. In the second case the supervisor reports the attempt it held (read
    from a shared slot the process writes before each attempt) as a failed attempt naming the exit
    code or signal, at once, so that a poison task uses up ``max_attempts`` in seconds; a process
    killed with SIGKILL from outside is a lost worker instead. Either way the entries the dead
    process still held are handed back for immediate reclaim, not left to their lease.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://…``.
        concurrency: task processes (default: every core).
        burst: exit when no work is left.
        name: worker name shown in ``mrkit status`` (default ``host:pid``; ``name/i`` for several).
        secret_file: file holding the shared secret (else ``MRKIT_SECRET``).

    Raises:
        ConfigError: a bad URL, no secret for a non-loopback Redis, or Redis refuses the credentials.
        StorageError: Redis cannot be reached.
    """
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
    secret = resolve_secret(url, secret_file)
    _check_connection(url)
    concurrency = concurrency or os.cpu_count() or 1
    base = name or f"{socket.gethostname()}:{os.getpid()}"
    names = [base] if concurrency == 1 else [f"{base}/{i}" for i in range(concurrency)]
    Supervisor(url, names, burst, secret).run()


class Supervisor:
    """The ``mrkit worker`` process: starts, watches and replaces its task processes (:func:`serve`)."""

    RESTART_PAUSE = 0.5  # seconds before replacing a process that died within a second of starting

    def __init__(self, url: str, names: list[str], burst: bool, secret: bytes) -> None:
        self.url, self.names, self.burst, self.secret = url, names, burst, secret
        # fork: the children need nothing but this module, and the supervisor runs no thread.
        self.ctx: Any = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.slots = [self.ctx.Array("c", SLOT_BYTES, lock=False) for _ in names]
        # The stop requests received, shared with the task processes. A SIGTERM sent to a child in
        # the instant after fork() is lost: CPython clears the signals pending in a fresh child
        # (bpo-9535, meant for those that arrived before the fork). A child reads this after
        # installing its handler, so it sees a request made before that, and a SIGTERM for a later
        # one reaches the handler.
        self.stop_flag = self.ctx.Value("i", 0, lock=False)
        self.children: list[Any] = [None] * len(names)
        self.started = [0.0] * len(names)
        self.stopping = False
        self.failed: list[int] = []
        self.stop_requests = 0  # SIGTERM/SIGINT received: each child gets one SIGTERM per request
        self.asked_to_stop: dict[int, int] = {}  # child pid -> SIGTERMs sent to it
        self._reporter: RedisWorker | None = None

    def _start(self, i: int) -> None:
        self.slots[i].value = b""
        child = self.ctx.Process(
            target=_serve_one,
            args=(
                self.url,
                self.names[i],
                self.burst,
                self.secret,
                os.getpid(),
                self.slots[i],
                self.stop_flag,
            ),
            daemon=False,
        )
        child.start()
        self.children[i], self.started[i] = child, time.monotonic()
        if self.stopping:
            # A stop request arrived while this replacement was being started, after forward()
            # had looked at the children: ask it too, or the supervisor would wait for it forever.
            self._ask_to_stop(child)

    def _ask_to_stop(self, child: Any) -> None:
        """SIGTERM ``child`` until it has had one per stop request (a second request means "stop
        now", abandoning the task in hand), never more."""
        if child.pid is None or not child.is_alive():
            return
        while self.asked_to_stop.get(child.pid, 0) < self.stop_requests:
            self.asked_to_stop[child.pid] = self.asked_to_stop.get(child.pid, 0) + 1
            os.kill(child.pid, signal.SIGTERM)

    def run(self) -> None:
        last_beat = 0.0
        supervisor = os.getpid()

        def forward(signum: int, _frame: Any) -> None:
            if os.getpid() != supervisor:
                # A task process just forked, asked to stop before it installed its own handler
                # (this one is inherited with the fork): it has nothing to finish, so it ends.
                os._exit(0)
            # Always SIGTERM: the children ignore SIGINT (and are group leaders, so a terminal's
            # Ctrl-C does not reach them): each sees one request to stop per Ctrl-C, not two (a
            # second one means "stop now", which would abandon the task in hand).
            self.stopping = True
            self.stop_requests += 1
            self.stop_flag.value = self.stop_requests  # before any SIGTERM: see __init__
            for child in self.children:
                if child is not None:
                    self._ask_to_stop(child)

        # First: a stop request during start-up is a clean stop (exit 0), not a death by SIGTERM.
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start_all()
            while any(child is not None for child in self.children):
                time.sleep(0.1)
                if time.monotonic() - last_beat >= WORKER_BEAT:
                    last_beat = time.monotonic()
                    self._beat()
                for i, child in enumerate(self.children):
                    if child is not None and not child.is_alive():
                        child.join()
                        self._ended(i, child.exitcode)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failed:
            raise StorageError(
                f"{len(self.failed)} of {len(self.names)} worker processes failed (exit codes {self.failed})"
            )

    def _start_all(self) -> None:
        for name in self.names:
            # Entries still pending for these names belong to a predecessor that used them (a fleet
            # restarted with the same --name after a kill): it is gone, so they are reclaimable now.
            try:
                self._hand_back(name)
            except Exception:
                pass  # Redis unreachable: the children say so
        for i in range(len(self.names)):
            if self.stopping:
                return  # asked to stop while starting: start no more
            self._start(i)

    def _beat(self) -> None:
        """Beat the liveness of the task processes alive: this process runs no user code, so a task
        holding the GIL (or busy in C) for seconds is not taken for a departed worker."""
        alive = [self.names[i] for i, c in enumerate(self.children) if c is not None and c.is_alive()]
        try:
            beat(self._worker(self.names[0]).client, *alive)
        except Exception:
            pass  # Redis unreachable: the task processes say so; departure is then what others see

    def _ended(self, i: int, code: int) -> None:
        """Task process ``i`` exited with ``code`` (negative: killed by that signal)."""
        held = self.slots[i].value
        self.slots[i].value = b""
        self.children[i] = None
        try:
            self._worker(self.names[i]).client.zrem(WORKERS, self.names[i])  # no beat of ours outlives it
        except Exception:
            pass
        if not held and code >= 0:
            if code:  # the worker itself failed (Redis unreachable in burst mode, say): no restart
                self.failed.append(code)
            return
        try:
            if held and code != -signal.SIGKILL:
                self._report_crash(self.names[i], json.loads(held), code)
            self._hand_back(self.names[i])
        except Exception as exc:  # Redis unreachable: the leases expire and others reclaim
            print(f"mrkit worker {self.names[i]}: could not report its end: {exc}", file=sys.__stderr__)
        print(f"mrkit worker {self.names[i]}: task process {_describe_exit(code)}", file=sys.__stderr__)
        if self.stopping:
            return
        if time.monotonic() - self.started[i] < 1.0:
            time.sleep(self.RESTART_PAUSE)  # a process that dies at once must not spin
            if self.stopping:  # asked to stop meanwhile
                return
        self._start(i)

    def _worker(self, name: str) -> RedisWorker:
        if self._reporter is None:
            self._reporter = RedisWorker(self.url, name=name, secret=self.secret, capture_output=False)
        self._reporter.name = name
        return self._reporter

    def _report_crash(self, name: str, held: dict[str, Any], code: int) -> None:
        """Report the attempt a dead task process held as failed, naming how the process ended."""
        worker = self._worker(name)
        stream, entry_id = str(held["stream"]), str(held["entry"]).encode()
        found = worker.client.xrange(stream, entry_id, entry_id)
        if not found:
            return  # acked and trimmed meanwhile: nothing to report
        fields = found[0][1]
        header, body = unpack(self.secret, fields, f"entry {entry_id.decode()} of {stream}")
        spec = dataclasses.replace(TaskSpec.decode(body), attempt=int(held["attempt"]))
        worker.report_failure(stream, entry_id, header, fields, spec, crash_failure(_describe_exit(code)))

    def _hand_back(self, name: str) -> None:
        """Make every entry still pending for consumer ``name`` reclaimable at once (it is dead)."""
        client = self._worker(name).client
        for raw in client.zrangebyscore(QUEUES, now_ms(), "+inf"):
            stream = raw.decode()
            pending = client.xpending_range(stream, GROUP, min="-", max="+", count=1000, consumername=name)
            ids = [entry["message_id"] for entry in pending]
            if ids:
                client.xclaim(stream, GROUP, name, 0, ids, idle=HANDBACK_IDLE_MS, justid=True)


def _describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by signal 11 (SIGSEGV)``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        signame = signal.Signals(-code).name
    except ValueError:
        signame = "unknown"
    return f"killed by signal {-code} ({signame})"


def _serve_one(
    url: str,
    name: str | None,
    burst: bool,
    secret: bytes,
    parent: int | None = None,
    slot: Any = None,
    stop_flag: Any = None,
) -> None:
    """One worker in this process; ``parent``: the pid of the supervisor that started it, if any;
    ``stop_flag``: its shared count of stop requests (see :class:`Supervisor`)."""
    if slot is not None and hasattr(os, "setpgrp"):
        os.setpgrp()  # a group leader: ending it after a timeout ends the user's grandchildren too
    install_capture()
    worker = RedisWorker(url, name=name, burst=burst, secret=secret, slot=slot)

    signals = 0
    request_stop, relay = _stop_relay(worker)

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals > 1 and worker._running_task():
            raise KeyboardInterrupt  # a second signal while a task runs: stop now, abandoning it
        # A stop already under way (a burst worker that drained, a parent gone) needs nothing more:
        # raising here would turn a clean exit into a traceback and exit status 1.
        request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    if parent is None:
        signal.signal(signal.SIGINT, on_signal)
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards Ctrl-C as one SIGTERM
        threading.Thread(
            target=_watch_parent, args=(worker, parent), name="mrkit-parent", daemon=True
        ).start()
    if stop_flag is not None and stop_flag.value:
        # Asked to stop while being started: the supervisor's SIGTERM may have been lost in the fork.
        on_signal(signal.SIGTERM, None)
    print(
        f"mrkit worker {worker.name}: consuming {worker.label}{' (burst)' if burst else ''}",
        file=sys.__stderr__,
    )
    done = worker.run()
    if signals:
        relay.join(timeout=1.0)  # its "stopping" line comes before the last one
    print(f"mrkit worker {worker.name}: exiting after {done} entries", file=sys.__stderr__)


def _stop_relay(worker: RedisWorker) -> tuple[Callable[[], None], threading.Thread]:
    """A stop request that a signal handler can make, and the thread that carries it out: the
    request writes one byte to a pipe; the thread, waiting on the pipe, says so and stops ``worker``.

    A handler runs in the main thread between two of its bytecodes, perhaps inside
    ``threading.Event.set()`` holding the event's lock (the worker loop sets its stop event as it
    ends): ``worker.stop()`` there waited for that lock forever, and a burst worker told to stop as
    it drained never exited (seen on a loaded machine). ``print`` there can fail the same way on the
    stream's lock. ``os.write`` takes no lock of Python's.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def relay() -> None:
        os.read(read_end, 1)
        print(f"mrkit worker {worker.name}: stopping after the current task", file=sys.__stderr__)
        worker.stop()

    thread = threading.Thread(target=relay, name="mrkit-stop", daemon=True)
    thread.start()

    def request() -> None:
        try:
            os.write(write_end, b"s")
        except BlockingIOError:
            pass  # the pipe is full of earlier requests: this one is already made

    return request, thread


def _watch_parent(worker: RedisWorker, parent: int) -> None:
    """Stop a pool's worker after the task in hand when the pool process is gone (SIGKILLed, say):
    nobody would forward signals to it any more, and it must not consume tasks as an orphan."""
    while not worker._stop.wait(1.0):
        if os.getppid() != parent:
            print(
                f"mrkit worker {worker.name}: the worker pool's process is gone; stopping",
                file=sys.__stderr__,
            )
            worker.stop()
            return


def _check_connection(url: str) -> None:
    client = connect(url)  # first: MissingExtra (pip install 'mrkit[redis]') if redis-py is missing
    import redis

    parsed = RedisURL.parse(url)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ConfigError(f"Redis at {redact(parsed.url)} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
            raise ConfigError(f"Redis at {redact(parsed.url)} refused the credentials: {exc}") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StorageError(f"cannot reach Redis at {redact(parsed.url)}: {exc}") from None
