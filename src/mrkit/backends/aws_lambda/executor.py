"""Serverless functions as workers: ``lambda://FUNCTION[?region=…]`` and ``lambda-local``.

The contract (:class:`LambdaExecutor`):

* ``submit(spec)`` invokes the function whose handler is
  :func:`mrkit.backends.aws_lambda.handler.handler` with a reference-only event (the spec's JSON; a map
  spec is under 2 KB, far below Lambda's 256 KB limit for asynchronous events, which is checked).
  The invocation runs the task and writes its :class:`~mrkit.model.task.TaskResult` to the job's
  storage (an object store every function reaches); the executor polls one listing per job for
  results and resolves the futures. With ``invocation="sync"`` (``RequestResponse``) the result
  comes back in the response instead.
* Lambda delivers an asynchronous event at least once, and retries a failed delivery. Each
  delivery runs under its own attempt keys and the runtime's commit is first-attempt-wins, so
  neither retries nor duplicates change the output (see :mod:`mrkit.backends.aws_lambda.handler`).
* Timeouts and poison tasks are *failed results*, counted against ``max_attempts``: the handler
  runs each attempt under :func:`mrkit.execution.watchdog.watch` (``enforces_timeouts``: an attempt
  without progress for ``task_timeout`` seconds, measured inside the function, reports a
  ``TaskTimeout`` naming its record, then ends its invocation), and an invocation whose task
  ended it (``os._exit(3)``, a segfault: the runtime's ``Runtime.ExitError``, see
  :func:`crash_description`) reports a ``WorkerCrashed`` failure naming the exit status or signal.
* A future fails only with :class:`~mrkit.errors.WorkerLost`: when every delivery of the event
  failed (the handler turns the on-failure record that ``mrkit lambda deploy`` routes back to the
  function into a ``.lost`` key), when no result came within ``lost_after`` seconds, or when the
  executor shut down. The driver then launches another attempt.
* ``workers`` is ``max_concurrency``: the driver keeps at most that many tasks in flight.
* ``local`` is False; ``storage_url(job_id)`` is the ``storage=`` option (``s3://bucket/mrkit``),
  which every function must reach.
* ``asynchronous`` is True: ``mrkit.submit`` hands the job to the serverless driver
  (:mod:`mrkit.backends.aws_lambda.jobs`), which advances it from inside the functions.

``lambda-local`` (:class:`LocalLambdaExecutor`) is the same executor with the local function
runtime (:mod:`mrkit.backends.aws_lambda.emulator`) in place of AWS: a fresh process per delivery, timeouts,
memory limits, retries and injected duplicates; its default storage is a local folder.

The key scheme and the event this executor shares with the handler and the serverless driver are in
:mod:`mrkit.backends.aws_lambda.wire`; the invokers (boto3 and local) in
:mod:`mrkit.backends.aws_lambda.invokers`. Why one module of about 520 lines: the executor's
dispatch (event batching), its sync path and its result polling share one table of pending
attempts and its lock.

Options (keyword arguments, or the query string: ``lambda://fn?region=eu-west-1&max_concurrency=50``):
``storage``, ``max_concurrency``, ``invocation`` (``event`` or ``sync``), ``batch_size`` (tasks per
event when several are queued, fewer when the payload limit requires: :func:`pack`),
``poll_interval``, ``lost_after``, ``region`` (lambda://), and for ``lambda-local`` the
:class:`~mrkit.backends.aws_lambda.emulator.FunctionConfig` fields (``timeout``, ``memory_mb``,
``max_retry_attempts``, ``retry_delay``, ``duplicate_rate``, ``cold_start``, ``state_dir``, …).
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from mrkit.backends.aws_lambda.invokers import BotoInvoker, Invoker, LocalInvoker, invoker_from_config
from mrkit.backends.aws_lambda.wire import (
    DELIVERY_STRIDE,
    EVENT_VERSION,
    HANDLER,
    LOST,
    MAX_ASYNC_EVENT,
    MAX_DELIVERIES,
    MAX_SYNC_EVENT,
    build_event,
    claim_key,
    claims_prefix,
    crash_description,
    crashed_result,
    done_prefix,
    lost_key,
    lost_reason,
    pack,
    result_key,
    skipped_key,
)
from mrkit.errors import ConfigError, WorkerLost
from mrkit.execution.base import Executor
from mrkit.model.task import TaskKind, TaskResult, TaskSpec

# Moved to .wire (the key scheme, the event) and .invokers; importable from here as before.
__all__ = [
    "DELIVERY_STRIDE",
    "EVENT_VERSION",
    "HANDLER",
    "MAX_ASYNC_EVENT",
    "MAX_DELIVERIES",
    "MAX_SYNC_EVENT",
    "BotoInvoker",
    "Invoker",
    "LambdaExecutor",
    "LocalInvoker",
    "LocalLambdaExecutor",
    "build_event",
    "claim_key",
    "claims_prefix",
    "crash_description",
    "crashed_result",
    "done_prefix",
    "invoker_from_config",
    "lost_key",
    "pack",
    "result_key",
    "skipped_key",
]


@dataclass
class _Pending:
    future: Future[TaskResult]
    spec: TaskSpec
    results_url: str
    deadline: float
    running: bool = False  # the function claimed the attempt: it has started up and runs it


def _resolve(
    future: Future[TaskResult], result: TaskResult | None = None, error: BaseException | None = None
) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass  # cancelled by the driver, or resolved by the other path (sync response vs listing)


# How long shutdown waits for each poll or dispatch thread to end: they end within a poll interval
# (an invoke in flight finishes first); the bound only keeps a stuck call from hanging the caller.
_THREAD_JOIN_SECONDS = 10.0

EXECUTOR_OPTIONS = {
    "storage": str,
    "max_concurrency": int,
    "invocation": str,
    "batch_size": int,
    "poll_interval": float,
    "lost_after": float,
    "region": str,
}
LOCAL_OPTIONS = {
    "timeout": float,
    "memory_mb": int,
    "max_retry_attempts": int,
    "retry_delay": float,
    "duplicate_rate": float,
    "cold_start": float,
    "on_failure": str,
    "state_dir": str,
    "environment": dict,
}


def _parse_options(
    name: str, options: dict[str, Any], allowed: dict[str, type]
) -> tuple[str, dict[str, Any]]:
    """Split ``scheme://target?k=v`` (or ``scheme?k=v``) into the target and typed options (keyword
    options win)."""
    if "://" in name.partition("?")[0]:  # not the "://" of a URL in the query (storage=s3://…)
        target, _, query = name.partition("://")[2].partition("?")
    else:
        target, query = "", name.partition("?")[2]
    parsed = urllib.parse.parse_qs(query, strict_parsing=bool(query))
    merged: dict[str, Any] = {k: v[-1] for k, v in parsed.items()}
    merged.update(options)
    unknown = sorted(set(merged) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for executor {name!r}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
    typed = {}
    for key, value in merged.items():
        kind = allowed[key]
        try:
            typed[key] = json.loads(value) if kind is dict and isinstance(value, str) else kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"option {key}={value!r} of executor {name!r} is not a {kind.__name__}"
            ) from exc
    return target, typed


class LambdaExecutor(Executor):
    """Runs each task in a serverless function invocation (see the module docstring).

    Args:
        invoker: how events reach the function (:class:`BotoInvoker`, :class:`LocalInvoker`).
        name: the executor string.
        storage: URL of the job storage the functions reach (``s3://bucket/mrkit``).
        max_concurrency: tasks in flight at once (default 64).
        invocation: ``event`` (asynchronous, results polled from storage) or ``sync``.
        batch_size: queued tasks sent in one event (tiny tasks; default 1); an event is closed
            early rather than pass Lambda's payload limit.
        poll_interval: seconds between result listings.
        lost_after: seconds without a result after which an attempt is lost (default: three
            function timeouts plus four minutes, Lambda's retry delays).
    """

    local = False
    asynchronous = True
    # The handler runs each attempt under mrkit.execution.watchdog: an attempt without progress for
    # task_timeout seconds comes back as a TaskTimeout failure, measured inside the function (a cold
    # start does not count).
    enforces_timeouts = True
    # A future turns running() when the function's claim of the attempt appears in storage, i.e.
    # once the invocation has started up: the driver's straggler clock then measures running time
    # only, like the in-function durations it is compared with (a cold start is not a straggler).
    reports_running = True

    def __init__(
        self,
        invoker: BotoInvoker | LocalInvoker,
        *,
        name: str,
        storage: str | None = None,
        max_concurrency: int = 64,
        invocation: str = "event",
        batch_size: int = 1,
        poll_interval: float = 0.25,
        lost_after: float | None = None,
    ) -> None:
        if invocation not in ("event", "sync"):
            raise ConfigError(f"invocation must be 'event' or 'sync', got {invocation!r}")
        if max_concurrency < 1 or batch_size < 1:
            raise ConfigError(
                f"max_concurrency and batch_size must be at least 1, got {max_concurrency}, {batch_size}"
            )
        self.invoker = invoker
        self.name = name
        self.workers = max_concurrency
        self.invocation = invocation
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lost_after = lost_after
        self._storage_url = storage
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[TaskSpec, str] | None] = queue.Queue()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False

    @classmethod
    def from_name(cls, name: str, *, workers: int | None = None, **options: Any) -> LambdaExecutor:
        """``lambda://FUNCTION[?region=…&storage=…&max_concurrency=…]``.

        Raises:
            ConfigError: no function name, or an unknown option.
        """
        function, opts = _parse_options(name, options, EXECUTOR_OPTIONS)
        if not function:
            raise ConfigError(f"executor {name!r} names no function: use lambda://FUNCTION[?region=REGION]")
        if workers:
            opts["max_concurrency"] = workers
        invoker = BotoInvoker(function, opts.pop("region", None))
        return cls(invoker, name=name, **opts)

    # -- the Executor interface ------------------------------------------------------------------

    def storage_url(self, job_id: str) -> str | None:
        return self._storage_url

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        results_url = spec.storage_url or self._storage_url
        if not results_url:
            raise ConfigError(
                f"executor {self.name} needs storage=URL (e.g. s3://bucket/mrkit) that its "
                "functions reach, for results and intermediate data"
            )
        self.check_reachable(results_url)
        if spec.output_url:
            self.check_reachable(spec.output_url)
        self._start()
        future: Future[TaskResult] = Future()
        deadline = time.monotonic() + self._lost_after()
        key = result_key(spec.job_id, spec.task_id, spec.attempt)
        with self._lock:
            if key in self._pending:
                # The same attempt submitted again (a duplicate delivery): its event goes out again,
                # and both callers get the attempt's one result, which is stored under this key.
                future = self._pending[key].future
            else:
                self._pending[key] = _Pending(future, spec, results_url, deadline)
        if self.invocation == "sync":
            threading.Thread(target=self._invoke_sync, args=(spec, results_url), daemon=True).start()
        else:
            self._queue.put((spec, results_url))
        return future

    def require_storage(self) -> str:
        """The storage URL jobs were submitted with; one sentence naming the fix when there is none."""
        if not self._storage_url:
            raise ConfigError(
                f"executor {self.name} names no storage: add ?storage=s3://bucket/prefix (the "
                "storage the job was submitted with)"
            )
        return self._storage_url

    def shutdown(self, wait: bool = True) -> None:
        self._closed.set()
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for item in pending:
            message = f"executor {self.name} shut down before {item.spec.task_id} reported"
            _resolve(item.future, error=WorkerLost(message, task_id=item.spec.task_id))
        self.invoker.close()
        if wait:
            # The poll and dispatch threads end within one poll interval (or on their None); joining
            # them gives the caller its process back single-threaded, so read_output may fork.
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(_THREAD_JOIN_SECONDS)

    # -- helpers ---------------------------------------------------------------------------------

    def check_reachable(self, url: str) -> None:
        if "://" not in url or url.startswith(("file://", "memory://")):
            raise ConfigError(
                f"functions of {self.name} cannot reach storage {url}: give storage= an object-"
                "store URL such as s3://bucket/mrkit"
            )

    def _lost_after(self) -> float:
        if self.lost_after is None:
            self.lost_after = 3 * self.invoker.timeout() + 240.0
        return self.lost_after

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            targets: list[Callable[[], None]] = [self._poll]
            if self.invocation == "event":
                # Invoke calls take ~10-50 ms each on AWS: a few threads keep the driver from waiting.
                targets += [self._dispatch] * min(8, self.workers)
            for target in targets:
                label = f"mrkit-lambda-{target.__name__.strip('_')}"
                thread = threading.Thread(target=target, daemon=True, name=label)
                thread.start()
                self._threads.append(thread)

    def _dispatch(self) -> None:
        """Send queued specs, up to ``batch_size`` (same storage) per event."""
        while not self._closed.is_set():
            item = self._queue.get()
            if item is None:
                return
            batch, url = [item[0]], item[1]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt[1] != url:
                    self._queue.put(nxt)  # not ours to batch: leave it for the next round
                    break
                batch.append(nxt[0])
            self._invoke_event(batch, url)

    def _invoke_event(self, batch: list[TaskSpec], url: str) -> None:
        for group in pack(batch, url, batch_size=len(batch)):
            self._invoke_group(group, url)

    def _invoke_group(self, group: list[TaskSpec], url: str) -> None:
        last: BaseException | None = None
        for attempt in range(4):
            try:
                self.invoker.invoke(build_event(group, url))
                return
            except ConfigError as exc:
                last = exc
                break
            except Exception as exc:  # throttled or unreachable API: back off, then call it lost
                last = exc
                time.sleep(0.2 * 2**attempt)
        for spec in group:
            self._fail(spec, f"invoking {self.name} failed: {type(last).__name__}: {last}")

    def _invoke_sync(self, spec: TaskSpec, url: str) -> None:
        try:
            response = self.invoker.invoke(build_event([spec], url, sync=True), sync=True)
            result = TaskResult.decode(response["results"][0])
        except Exception as exc:
            from mrkit.execution.runtime import storage_for

            crash = crash_description(str(getattr(exc, "error_type", "")), str(exc))
            try:  # an attempt that timed out reported itself before its invocation ended
                stored = storage_for(url).get_or_none(result_key(spec.job_id, spec.task_id, spec.attempt))
            except Exception:
                stored = None
            if stored is not None:
                result = TaskResult.decode(stored)
            elif crash is not None:
                result = crashed_result(spec, crash, worker=self.name)
            else:
                self._fail(spec, f"{type(exc).__name__}: {exc}")
                return
        with self._lock:
            pending = self._pending.pop(result_key(spec.job_id, spec.task_id, spec.attempt), None)
        if pending is not None:
            _resolve(pending.future, result)

    def _fail(self, spec: TaskSpec, reason: str) -> None:
        with self._lock:
            pending = self._pending.pop(result_key(spec.job_id, spec.task_id, spec.attempt), None)
        if pending is not None:
            _resolve(
                pending.future,
                error=WorkerLost(
                    f"{spec.task_id} attempt {spec.attempt} on {self.name}: {reason}",
                    task_id=spec.task_id,
                    attempt=spec.attempt,
                    worker=self.name,
                ),
            )

    def _poll(self) -> None:
        """List each job's results once per interval; resolve what arrived, expire what is overdue."""
        from mrkit.execution.runtime import storage_for  # one storage object per URL in this process

        while not self._closed.wait(self.poll_interval):
            with self._lock:
                for key in [k for k, p in self._pending.items() if p.future.cancelled()]:
                    del self._pending[key]
                jobs = {(p.results_url, p.spec.job_id) for p in self._pending.values()}
            for url, job_id in jobs:
                try:
                    storage = storage_for(url)
                    found = set(storage.list(done_prefix(job_id)))
                    self._mark_running(storage, job_id)
                except Exception:  # a listing that fails is retried at the next interval
                    continue
                with self._lock:
                    ready = [
                        (k, p)
                        for k, p in self._pending.items()
                        if p.spec.job_id == job_id and (k in found or k + LOST in found)
                    ]
                for key, pending in ready:
                    self._collect(storage, key, pending, lost=key not in found)
            now = time.monotonic()
            with self._lock:
                overdue = [p for p in self._pending.values() if now > p.deadline]
            for pending in overdue:
                self._fail(pending.spec, f"no result within lost_after={self.lost_after:.0f}s")

    def _mark_running(self, storage: Any, job_id: str) -> None:
        """Mark running the futures of attempts whose claim (written by the function once started) exists."""
        with self._lock:
            waiting = [p for p in self._pending.values() if p.spec.job_id == job_id and not p.running]
        if not waiting:
            return
        claimed = {key.rsplit("/", 1)[0] for key in storage.list(claims_prefix(job_id))}
        for pending in waiting:
            spec = pending.spec
            if claim_key(job_id, spec.task_id, spec.attempt, 0).rsplit("/", 1)[0] in claimed:
                pending.running = True
                try:
                    pending.future.set_running_or_notify_cancel()  # False: cancelled meanwhile
                except RuntimeError:
                    pass  # already resolved (a synchronous response, or lost): nothing to mark

    def _collect(self, storage: Any, key: str, pending: _Pending, *, lost: bool) -> None:
        try:
            raw = storage.get(key + LOST if lost else key)
        except Exception:  # read again at the next interval
            return
        if lost:
            self._fail(pending.spec, f"every delivery failed: {lost_reason(raw, '?')}")
            return
        with self._lock:
            self._pending.pop(key, None)
        if pending.spec.kind is TaskKind.CALL:
            storage.delete(key)  # futures results have no job folder that is discarded afterwards
        _resolve(pending.future, TaskResult.decode(raw))


class LocalLambdaExecutor(LambdaExecutor):
    """``lambda-local`` or ``lambda-local://NAME?…``: the local function runtime behind the same executor.

    Only the invoker and the defaults differ from :class:`LambdaExecutor` (so it subclasses it
    rather than :class:`Executor`): storage defaults to a local folder, which every local
    delivery reaches, and results are polled every 20 ms.
    """

    @classmethod
    def from_name(cls, name: str, *, workers: int | None = None, **options: Any) -> LocalLambdaExecutor:
        """Build from ``lambda-local[://NAME][?option=…]`` and keyword options.

        Raises:
            ConfigError: an unknown option or a bad value.
        """
        from mrkit.backends.aws_lambda.emulator import FunctionConfig

        allowed = {**EXECUTOR_OPTIONS, **LOCAL_OPTIONS}
        allowed.pop("region")
        function, opts = _parse_options(name, options, allowed)
        if workers:
            opts["max_concurrency"] = workers
        fields = {k: opts.pop(k) for k in list(opts) if k in LOCAL_OPTIONS}
        config = FunctionConfig(
            name=function or "mrkit-local",
            max_concurrency=opts.get("max_concurrency", os.cpu_count() or 2),
            **fields,
        )
        opts.setdefault("max_concurrency", config.max_concurrency)
        opts.setdefault("poll_interval", 0.02)
        opts.setdefault("lost_after", config.timeout * (1 + config.max_retry_attempts) + 60.0)
        if "storage" not in opts:
            opts["storage"] = "file://" + os.path.join(
                config.state_dir or os.path.join(tempfile.gettempdir(), "mrkit-lambda-local", config.name),
                "store",
            )
        return cls(LocalInvoker(config), name=name, **opts)

    def check_reachable(self, url: str) -> None:
        if url.startswith("memory://"):
            raise ConfigError(
                f"local functions run in fresh processes and cannot reach {url}: give storage= "
                "a folder or an object-store URL"
            )
