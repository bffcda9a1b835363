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

Why one module of about 770 lines: the key scheme, the event, the two invokers (boto3 and local) and the
executor are one contract that the handler, the serverless driver and the tests import together;
the invokers would be the first to move out if it grows.

Keys this module writes and reads, in the job's storage (``layout.py`` holds the job's own)::

    {job}/lambda/claims/{task}/a{attempt}/d{n}   delivery n of an attempt's event (put_if_absent),
                                                 holding the request id; its keys use attempt
                                                 ``attempt + 1000 * n`` (see lambda_handler)
    {job}/lambda/done/{task}/a{attempt}          the attempt's TaskResult JSON (first delivery to end)
    {job}/lambda/done/{task}/a{attempt}.lost     every delivery of the attempt failed (JSON reason)
    {job}/lambda/skipped/{task}/a{attempt}-{id}  a delivery that found the attempt reported or the
                                                 task committed and did not run it (empty)

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
import re
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Protocol

from mrkit.errors import ConfigError, MissingExtra, WorkerLost
from mrkit.execution.base import Executor
from mrkit.model.task import TaskKind, TaskResult, TaskSpec

HANDLER = "mrkit.backends.aws_lambda.handler.handler"
EVENT_VERSION = 1
MAX_ASYNC_EVENT = 256 * 1024  # Lambda's limit for an asynchronous (Event) invocation payload
MAX_SYNC_EVENT = 6 * 1024 * 1024  # ... and for a synchronous one
DELIVERY_STRIDE = 1000  # delivery n of attempt a runs as attempt a + 1000 * n (drivers never get near 1000)
MAX_DELIVERIES = 16  # deliveries of one attempt's event before the handler calls it lost


# -- the key scheme --------------------------------------------------------------------------------


def claim_key(job_id: str, task_id: str, attempt: int, delivery: int) -> str:
    return f"{job_id}/lambda/claims/{task_id}/a{attempt}/d{delivery}"


def claims_prefix(job_id: str) -> str:
    return f"{job_id}/lambda/claims/"


def done_prefix(job_id: str) -> str:
    return f"{job_id}/lambda/done/"


def result_key(job_id: str, task_id: str, attempt: int) -> str:
    return f"{job_id}/lambda/done/{task_id}/a{attempt}"


def skipped_key(job_id: str, task_id: str, attempt: int, token: str) -> str:
    return f"{job_id}/lambda/skipped/{task_id}/a{attempt}-{token}"


def lost_key(job_id: str, task_id: str, attempt: int) -> str:
    return result_key(job_id, task_id, attempt) + ".lost"


# How a function's runtime reports a handler process that died: "exit status 3" locally and on AWS,
# "signal SIGSEGV" locally, "signal: segmentation fault" on AWS.
_CRASH_SIGNALS = {
    "SIGSEGV": "segmentation fault",
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
    "SIGFPE": "floating point exception",
    "SIGILL": "illegal instruction",
}


def crash_description(error_type: str, message: str) -> str | None:
    """How the task's own code ended its invocation, from the runtime's error; None when it did not.

    A ``Runtime.ExitError`` with a non-zero exit status (``os._exit(3)``) or a crash signal (a
    segfault, ``abort()``) is the task's doing: a *failed attempt*, counted against ``max_attempts``.
    SIGKILL is not: it comes from outside (the runtime's timeout, an operator, the OOM killer), so
    such an invocation stays *lost*.

    >>> crash_description("Runtime.ExitError", "Runtime exited with error: exit status 3")
    'exit status 3'
    >>> crash_description("Runtime.ExitError", "Runtime exited with error: signal: segmentation fault")
    'signal SIGSEGV (segmentation fault)'
    >>> crash_description("Runtime.ExitError", "Runtime exited without a response (signal SIGKILL)") is None
    True
    """
    if error_type != "Runtime.ExitError" and "Runtime.ExitError" not in message:
        return None
    status = re.search(r"exit status (\d+)", message)
    if status and status[1] != "0":
        return f"exit status {status[1]}"
    for name, text in _CRASH_SIGNALS.items():
        if name in message or text in message:
            return f"signal {name} ({text})"
    return None


def build_event(
    specs: list[TaskSpec], results_url: str, *, job: dict[str, Any] | None = None, sync: bool = False
) -> dict[str, Any]:
    """The event of one invocation: specs by reference, where results go, and (serverless) the job.

    Raises:
        ConfigError: the event exceeds Lambda's payload limit (only a futures call with large
            arguments can: send fewer items per task, or references instead of data).
    """
    event: dict[str, Any] = {
        "mrkit": EVENT_VERSION,
        "specs": [s.encode().decode() for s in specs],
        "results": results_url,
    }
    if job is not None:
        event["job"] = job
    size = len(json.dumps(event))
    limit = MAX_SYNC_EVENT if sync else MAX_ASYNC_EVENT
    if size > limit:
        raise ConfigError(
            f"the event of {', '.join(s.task_id for s in specs)} is {size:,} bytes, over "
            f"Lambda's {limit:,}-byte limit: pass references (paths, keys) instead of data, "
            "or fewer items"
        )
    return event


def pack(
    specs: list[TaskSpec],
    results_url: str,
    *,
    job: dict[str, Any] | None = None,
    batch_size: int = 1,
    sync: bool = False,
) -> list[list[TaskSpec]]:
    """Group ``specs`` into events of at most ``batch_size`` specs, in order, and never over Lambda's
    payload limit: a batch that would pass it is closed early (a spec too large on its own gets an
    event of its own, which :func:`build_event` then refuses).

    >>> specs = [TaskSpec(job_id="j", task_id=f"call-{i:06d}", kind=TaskKind.CALL, call=b"x" * 70_000)
    ...          for i in range(5)]
    >>> [len(group) for group in pack(specs, "s3://b/p", batch_size=4)]  # ~93 KB each; 256 KB limit
    [2, 2, 1]
    """
    limit = MAX_SYNC_EVENT if sync else MAX_ASYNC_EVENT
    empty = {"mrkit": EVENT_VERSION, "specs": [], "results": results_url, **({"job": job} if job else {})}
    base = len(json.dumps(empty))
    groups: list[list[TaskSpec]] = []
    group: list[TaskSpec] = []
    size = base
    for spec in specs:
        item = len(json.dumps(spec.encode().decode())) + (2 if group else 0)  # json.dumps puts ", "
        if group and (len(group) >= batch_size or size + item > limit):
            groups.append(group)
            group, size = [], base
            item -= 2
        group.append(spec)
        size += item
    if group:
        groups.append(group)
    return groups


def crashed_result(spec: TaskSpec, crash: str, *, worker: str) -> TaskResult:
    """The failed result of an attempt whose code ended its invocation (see :func:`crash_description`)."""
    from mrkit.execution.watchdog import crash_failure  # the far side's failure vocabulary

    return TaskResult(spec.task_id, spec.attempt, ok=False, worker=worker, failure=crash_failure(crash))


# -- invokers: how an event reaches a function -------------------------------------------------------


class Invoker(Protocol):
    """Delivers events to one function."""

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        """Invoke; return the response (sync) or None (async, once accepted)."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON that :func:`invoker_from_config` turns back into an invoker (inside a function)."""
        ...

    def timeout(self) -> float:
        """The function's timeout in seconds."""
        ...

    def close(self) -> None: ...


class BotoInvoker:
    """Invokes a deployed AWS Lambda function with boto3.

    Args:
        function: name, ARN or ``name:alias``.
        region: AWS region (default: the environment's).
    """

    def __init__(self, function: str, region: str | None = None) -> None:
        self.function = function
        self.region = region
        self._client: Any = None
        self._timeout: float | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import boto3.session
                    from botocore.config import Config
                except ImportError:
                    raise MissingExtra("the lambda:// executor", "lambda", "boto3") from None
                # Invoke returns 202 at once for Event; a sync call may run for the function's whole timeout.
                config = Config(
                    read_timeout=905, retries={"max_attempts": 4, "mode": "standard"}, max_pool_connections=64
                )
                session = boto3.session.Session()
                self._client = session.client("lambda", region_name=self.region, config=config)
            return self._client

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        response = self.client.invoke(
            FunctionName=self.function,
            InvocationType="RequestResponse" if sync else "Event",
            Payload=json.dumps(event).encode(),
        )
        if not sync:
            return None
        payload = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError"):
            if isinstance(payload, dict):
                message = f"{payload.get('errorType', '?')}: {payload.get('errorMessage', payload)}"
            else:
                message = str(payload)
            raise WorkerLost(f"function {self.function}: {response['FunctionError']} error: {message}")
        return payload

    def config(self) -> dict[str, Any]:
        return {"kind": "lambda", "function": self.function, "region": self.region}

    def timeout(self) -> float:
        if self._timeout is None:
            try:
                described = self.client.get_function_configuration(FunctionName=self.function)
                self._timeout = float(described["Timeout"])
            except Exception:  # not allowed to read it, or not deployed yet: assume Lambda's maximum
                self._timeout = 900.0
        return self._timeout

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LocalInvoker:
    """Invokes the local function runtime (:class:`~mrkit.backends.aws_lambda.emulator.LocalFunction`)."""

    def __init__(self, config: Any, *, detached: bool = False) -> None:
        from mrkit.backends.aws_lambda.emulator import LocalFunction  # the far side, imported late (layers)

        self.function = LocalFunction(config, detached=detached)

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        return self.function.invoke(event, sync=sync)

    def config(self) -> dict[str, Any]:
        return {"kind": "local", "config": self.function.config.to_dict()}

    def timeout(self) -> float:
        return float(self.function.config.timeout)

    def close(self) -> None:
        self.function.shutdown()


def invoker_from_config(config: dict[str, Any]) -> BotoInvoker | LocalInvoker:
    """Rebuild an invoker from :meth:`Invoker.config` (local ones are detached: a function's
    invocations must outlive it)."""
    if config.get("kind") == "lambda":
        return BotoInvoker(config["function"], config.get("region"))
    if config.get("kind") == "local":
        from mrkit.backends.aws_lambda.emulator import FunctionConfig

        return LocalInvoker(FunctionConfig.from_dict(config["config"]), detached=True)
    raise ConfigError(f"unknown invoker {config!r}: expected kind 'lambda' or 'local'")


# -- the executor ------------------------------------------------------------------------------------


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
                        if p.spec.job_id == job_id and (k in found or k + ".lost" in found)
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
            raw = storage.get(key + ".lost" if lost else key)
        except Exception:  # read again at the next interval
            return
        if lost:
            self._fail(pending.spec, f"every delivery failed: {json.loads(raw).get('reason', '?')}")
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
