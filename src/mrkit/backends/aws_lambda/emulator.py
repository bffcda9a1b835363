"""The local function runtime: AWS Lambda's invocation contract on this machine (``lambda-local``).

It runs the handler that a deployed function runs (``mrkit.backends.aws_lambda.handler.handler``) with the
same ``(event, context)`` contract, and keeps what a serverless job has to survive on Lambda:

* **A fresh process per delivery** (``python -m mrkit.backends.aws_lambda.emulator run``): every
  invocation is a cold start; nothing survives in memory from one invocation to the next.
  ``cold_start`` adds a start-up delay before the handler is imported (a heavy package on AWS).
* **A timeout per invocation**: a delivery still running after ``timeout`` seconds is killed
  (SIGKILL of its process group), like Lambda's "Task timed out".
* **A memory limit per invocation**: the delivery lowers its own ``RLIMIT_AS`` to ``memory_mb``
  before it imports the handler, so an allocation beyond it raises ``MemoryError`` inside.
* **Synchronous invocations** (``RequestResponse``): one delivery; its return value, or
  :class:`FunctionError`; never retried (Lambda does not retry them either).
* **Asynchronous invocations** (``Event``): queued until one of ``max_concurrency`` slots is free
  (slots are ``flock``-ed files, shared by every process using the same ``state_dir``, so
  invocations made from inside functions are throttled too), then delivered **at least once**: a
  delivery that raises, crashes, is killed or times out is retried ``max_retry_attempts`` times
  (Lambda's default: 2) with the same request id; ``duplicate_rate`` injects a second, concurrent
  delivery of the same event, as Lambda occasionally does. When every retry failed, an on-failure
  record in Lambda's destination format (``requestContext.condition == "RetriesExhausted"``,
  ``requestPayload`` = the event) is sent to the function itself (``on_failure="self"``), as
  ``mrkit lambda deploy`` configures on AWS.
* **Detached invocations**: an asynchronous invocation made with ``detached=True`` (by the
  serverless driver, from the submitter or from inside a function) is supervised by its own
  process in a new session, so it outlives the process that made it.
* **Shutdown** (:meth:`LocalFunction.shutdown`) kills the deliveries this object runs and drops the
  ones still waiting for a slot: nothing it invoked starts afterwards. :meth:`LocalFunction.wait_idle`
  waits until no delivery of the ``state_dir`` runs or waits, detached ones included, and
  :func:`mrkit.backends.aws_lambda.detached.stop_detached` stops them all (a test's teardown: a
  submitted job's deliveries would otherwise retry against a storage server that is gone, for
  minutes after the test).

Not emulated: Lambda's delays between retries (about one and two minutes; here ``retry_delay``), the
maximum event age, warm sandboxes being reused, and the payload limits (checked by the executor).

Each delivery appends its stdout and stderr, framed by ``START``/``END``/``REPORT`` lines as in
CloudWatch Logs, to ``{state_dir}/function.log``.

About 600 lines: the runtime side (deliveries, retries, timeouts, the on-failure record) and the
process side (``python -m … run``) are one protocol over the response file and read together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mrkit.backends.aws_lambda.wire import failure_record, function_arn, is_failure_record, log_group
from mrkit.errors import ConfigError, WorkerLost

HANDLER = "mrkit.backends.aws_lambda.handler:handler"


class FunctionError(WorkerLost):
    """Raised by a synchronous invocation whose delivery raised, crashed or timed out.

    Attributes:
        error_type: ``TimedOut``, ``Runtime.ExitError`` or the handler's exception class name.
        request_id: the invocation's request id.
    """

    def __init__(self, message: str, *, error_type: str, request_id: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.request_id = request_id


@dataclass(frozen=True)
class FunctionConfig:
    """A local function's configuration, as a deployed function has one.

    Attributes:
        name: the function's name (reported in the context; names the default ``state_dir``).
        handler: ``module:function`` called with ``(event, context)``.
        timeout: seconds a delivery may run before it is killed.
        memory_mb: address-space limit of a delivery (``RLIMIT_AS``); the interpreter, boto3 and
            the job's data must fit (Lambda's memory setting limits resident memory instead).
        max_concurrency: deliveries running at once across every process sharing ``state_dir``.
        max_retry_attempts: retries of a failed asynchronous delivery (Lambda: 0-2, default 2).
        retry_delay: seconds between them.
        duplicate_rate: probability that an asynchronous event is delivered twice at once.
        cold_start: seconds each delivery spends starting up before it imports the handler (an
            injected cold start: a large package or a VPC attachment; counted in the timeout).
        on_failure: ``"self"``: send the on-failure record to this function; ``""``: drop it.
        environment: extra environment variables of every delivery.
        state_dir: folder for slot locks and the log (default: ``{tmp}/mrkit-lambda-local/{name}``).

    Example:
        >>> FunctionConfig(name="wc", timeout=30).to_dict()["timeout"]
        30
    """

    name: str = "mrkit-local"
    handler: str = HANDLER
    timeout: float = 900.0
    memory_mb: int = 2048
    max_concurrency: int = field(default_factory=lambda: os.cpu_count() or 2)
    max_retry_attempts: int = 2
    retry_delay: float = 0.2
    duplicate_rate: float = 0.0
    cold_start: float = 0.0
    on_failure: str = "self"
    environment: dict[str, str] = field(default_factory=dict)
    state_dir: str = ""

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.memory_mb < 64 or self.max_concurrency < 1:
            raise ConfigError(
                f"local function {self.name}: timeout > 0, memory_mb >= 64 and "
                f"max_concurrency >= 1 are required, got {self.timeout}, {self.memory_mb}, "
                f"{self.max_concurrency}"
            )
        if not 0 <= self.duplicate_rate <= 1 or self.max_retry_attempts < 0 or self.cold_start < 0:
            raise ConfigError(
                f"duplicate_rate must be in [0, 1], max_retry_attempts and cold_start >= 0, got "
                f"{self.duplicate_rate}, {self.max_retry_attempts}, {self.cold_start}"
            )
        if self.on_failure not in ("self", ""):
            raise ConfigError(f"on_failure must be 'self' or '', got {self.on_failure!r}")

    def folder(self) -> str:
        return self.state_dir or os.path.join(tempfile.gettempdir(), "mrkit-lambda-local", self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FunctionConfig:
        return cls(**data)


class _Closed(Exception):
    """The function was shut down while a delivery waited for a slot: it is dropped, never started."""


class LambdaContext:
    """The context object a handler receives, with the attributes of AWS Lambda's Python one."""

    def __init__(
        self,
        *,
        function_name: str,
        memory_limit_in_mb: int,
        aws_request_id: str,
        deadline: float,
        invoked_function_arn: str = "",
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = invoked_function_arn or function_arn(function_name)
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id
        self.log_group_name = log_group(function_name)
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


@dataclass
class Delivery:
    """How one delivery went: ``ok`` with the handler's ``response``, or an ``error`` record."""

    ok: bool
    response: Any = None
    error: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class LocalFunction:
    """Invoke a local function (see the module docstring for the contract).

    Args:
        config: the function's :class:`FunctionConfig`.
        detached: asynchronous invocations get their own supervising process (they outlive this
            one) instead of a thread of this process.
    """

    def __init__(self, config: FunctionConfig, *, detached: bool = False) -> None:
        self.config = config
        self.detached = detached
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._threads: set[threading.Thread] = set()  # asynchronous deliveries of this object
        self._lock = threading.Lock()
        self._closed = False
        # Duplicates, slot order and retry jitter draw from a private generator, never from the
        # caller's global ``random`` stream (a user who seeds it must get the same sequence).
        self._rng = random.Random()
        self.deliveries: list[Delivery] = []  # completed deliveries of this object (for the benchmark)
        for sub in ("slots", "running"):
            os.makedirs(os.path.join(config.folder(), sub), exist_ok=True)

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        """Invoke the function with ``event``.

        Returns:
            Synchronously: the handler's return value. Asynchronously: None, at once.

        Raises:
            FunctionError: (sync only) the delivery raised, crashed or timed out.
        """
        request_id = str(uuid.uuid4())
        if sync:
            outcome = self.deliver(event, request_id, 1)
            if not outcome.ok:
                raise FunctionError(
                    f"function {self.config.name} request {request_id}: "
                    f"{outcome.error.get('errorType')}: {outcome.error.get('errorMessage')}",
                    error_type=str(outcome.error.get("errorType")),
                    request_id=request_id,
                )
            return outcome.response
        if self.detached:
            self._spawn_supervisor(event, request_id)
        else:
            self._start_thread(self.deliver_async, event, request_id)
        return None

    def _start_thread(self, target: Any, event: dict[str, Any], request_id: str) -> threading.Thread:
        thread = threading.Thread(
            target=self._forget_when_done,
            args=(target, event, request_id),
            daemon=True,
            name=f"lambda-local-{request_id[:8]}",
        )
        with self._lock:
            if self._closed:
                return thread  # never started: the function is shut down
            self._threads.add(thread)
        thread.start()
        return thread

    def _forget_when_done(self, target: Any, event: dict[str, Any], request_id: str) -> None:
        try:
            target(event, request_id)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    # -- asynchronous delivery -------------------------------------------------------------------

    def deliver_async(self, event: dict[str, Any], request_id: str) -> None:
        """Deliver ``event`` at least once: retries, injected duplicates, then the on-failure record."""
        if self._rng.random() < self.config.duplicate_rate:
            twin = self._start_thread(self._deliver_with_retries, event, request_id)
            self._deliver_with_retries(event, request_id)
            if twin.is_alive():
                twin.join()
        else:
            self._deliver_with_retries(event, request_id)

    def _deliver_with_retries(self, event: dict[str, Any], request_id: str) -> None:
        outcome = Delivery(ok=False)
        attempts = 1 + self.config.max_retry_attempts
        for count in range(1, attempts + 1):
            if self._closed:
                return
            try:
                outcome = self.deliver(event, request_id, count)
            except _Closed:
                return  # shut down while waiting for a slot: dropped, as Lambda drops nothing (see shutdown)
            if outcome.ok:
                return
            if count < attempts:
                time.sleep(self.config.retry_delay)
        if self.config.on_failure == "self" and not is_failure_record(event) and not self._closed:
            # Lambda's destination record; never one for a record, so failures cannot loop.
            record = failure_record(
                event,
                request_id=request_id,
                attempts=attempts,
                function=self.config.name,
                error=outcome.error,
            )
            self.invoke(record)

    def _spawn_supervisor(self, event: dict[str, Any], request_id: str) -> None:
        folder = self.config.folder()
        fd, path = tempfile.mkstemp(prefix="event-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({"config": self.config.to_dict(), "event": event, "request_id": request_id}, f)
        log = os.path.join(folder, "function.log")
        # `sh -c '... &'` backgrounds the supervisor and exits at once: the supervisor is re-parented
        # (no zombie here, no Popen left running in this process) and, in its new session, is not
        # killed with the delivery that invoked it.
        subprocess.run(
            [
                "/bin/sh",
                "-c",
                '"$@" </dev/null >>"$LOG" 2>&1 &',
                "sh",
                sys.executable,
                "-m",
                "mrkit.backends.aws_lambda.detached",  # its run_supervisor
                path,
            ],
            env={**os.environ, "LOG": log},
            start_new_session=True,
            check=True,
        )

    # -- one delivery ----------------------------------------------------------------------------

    def deliver(self, event: dict[str, Any], request_id: str, count: int) -> Delivery:
        """Run the handler once on ``event`` in a fresh process (waits for a concurrency slot).

        Raises:
            _Closed: the function was shut down before the delivery started (it never starts).
        """
        config = self.config
        folder = config.folder()
        with self._slot():
            started = time.monotonic()
            fd, response_path = tempfile.mkstemp(prefix="response-", suffix=".json", dir=folder)
            os.close(fd)
            os.unlink(response_path)  # the delivery creates it (atomically) when it has something to say
            context = {
                "function_name": config.name,
                "memory_limit_in_mb": config.memory_mb,
                "aws_request_id": request_id,
                "deadline": time.time() + config.timeout,
                "handler": config.handler,
                "count": count,
                "cold_start": config.cold_start,
            }
            env = {
                **os.environ,
                **config.environment,
                "MRKIT_LAMBDA_CONTEXT": json.dumps(context),
                "MRKIT_LAMBDA_RESPONSE": response_path,
                "AWS_LAMBDA_FUNCTION_NAME": config.name,
            }
            with open(os.path.join(folder, "function.log"), "ab") as log:
                with self._lock:
                    if self._closed:  # shut down while we waited for the slot: never start
                        raise _Closed()
                    log.write(f"START RequestId: {request_id} Attempt: {count} Version: $LATEST\n".encode())
                    log.flush()
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "mrkit.backends.aws_lambda.emulator", "run"],
                        stdin=subprocess.PIPE,
                        stdout=log,
                        stderr=log,
                        env=env,
                        start_new_session=True,
                    )  # its own group: a timeout kills all of it
                    self._procs.add(proc)  # under the lock: shutdown() cannot miss it
                try:
                    outcome = self._wait(proc, event, response_path)
                finally:
                    with self._lock:
                        self._procs.discard(proc)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(response_path)
                outcome.seconds = time.monotonic() - started
                status = "ok" if outcome.ok else outcome.error.get("errorType", "error")
                log.write(
                    f"END RequestId: {request_id}\nREPORT RequestId: {request_id} "
                    f"Duration: {outcome.seconds * 1000:.2f} ms Memory Size: {config.memory_mb} MB "
                    f"Status: {status}\n".encode()
                )
        with self._lock:
            self.deliveries.append(outcome)
        return outcome

    def _wait(self, proc: subprocess.Popen[bytes], event: dict[str, Any], response_path: str) -> Delivery:
        try:
            # communicate() hands the event over and waits, both within the timeout (a delivery that
            # never reads its stdin cannot block us on a full pipe). A delivery that dies before
            # reading its event just closes the pipe; its exit status says why.
            proc.communicate(json.dumps(event).encode(), timeout=self.config.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()  # reaps it and closes our end of its stdin
            return Delivery(
                ok=False,
                error={
                    "errorType": "TimedOut",
                    "errorMessage": f"Task timed out after {self.config.timeout:.2f} seconds",
                },
            )
        try:
            with open(response_path) as f:
                reply = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            reply = None
        if proc.returncode == 0 and reply is not None and reply.get("ok"):
            return Delivery(ok=True, response=reply.get("response"))
        if reply is not None and not reply.get("ok"):
            return Delivery(ok=False, error={k: v for k, v in reply.items() if k != "ok"})
        code = proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return Delivery(
            ok=False,
            error={
                "errorType": "Runtime.ExitError",
                "errorMessage": f"Runtime exited without a response ({how})",
            },
        )

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of ``max_concurrency`` slot files (``flock``), waiting for one if all are held."""
        folder = os.path.join(self.config.folder(), "slots")
        n = self.config.max_concurrency
        first = self._rng.randrange(n)
        while True:
            for i in range(n):
                path = os.path.join(folder, f"slot-{(first + i) % n}")
                f = open(path, "a+b")  # noqa: SIM115 - held until the delivery ends
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                try:
                    yield
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                    f.close()
                return
            if self._closed:
                raise _Closed()
            time.sleep(0.01 + self._rng.random() * 0.02)

    def shutdown(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Kill the deliveries this object runs and drop those waiting for a slot or a retry
        (detached ones are not ours): nothing this object invoked starts afterwards.

        Args:
            wait: also wait (up to ``timeout`` seconds) until its delivery threads have ended.
        """
        with self._lock:
            self._closed = True
            procs = list(self._procs)
            threads = list(self._threads)
        for proc in procs:
            _kill_group(proc)
        if wait:
            deadline = time.monotonic() + timeout
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def kill_now(self) -> None:
        """Kill this object's deliveries and start no more, without taking its lock: safe in a
        signal handler that interrupted this object's own thread (:meth:`shutdown` could wait for
        the lock that thread holds)."""
        self._closed = True
        for proc in list(self._procs):
            _kill_group(proc)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no delivery of this function's ``state_dir`` runs, waits for a slot or is about
        to be supervised (detached ones of every process included).

        Returns:
            True once idle; False if deliveries were still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self._busy():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _busy(self) -> bool:
        folder = self.config.folder()
        with self._lock:
            if any(t.is_alive() for t in self._threads):
                return True
        names = os.listdir(folder)
        if any(n.startswith("event-") and n.endswith(".json") for n in names):
            return True  # a detached invocation whose supervisor has not taken its lock yet
        running = os.path.join(folder, "running")
        locks = [os.path.join(running, n) for n in os.listdir(running)]
        slots = os.path.join(folder, "slots")
        return any(lock_held(p, remove_stale=True) for p in locks) or any(
            lock_held(os.path.join(slots, n)) for n in os.listdir(slots)
        )


def lock_held(path: str, *, remove_stale: bool = False) -> bool:
    """True when another open file holds the ``flock`` of ``path``."""
    try:
        f = open(path, "a+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        if remove_stale:  # its supervisor ended (or was killed) without removing it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# -- the far side: what a delivery process runs (a supervisor's: detached.run_supervisor) --------------------


def _run_delivery() -> int:
    """Body of ``python -m mrkit.backends.aws_lambda.emulator run``: one invocation, then exit."""
    ctx = json.loads(os.environ["MRKIT_LAMBDA_CONTEXT"])
    response_path = os.environ["MRKIT_LAMBDA_RESPONSE"]
    limit = int(ctx["memory_limit_in_mb"]) << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # an already stricter limit (ulimit -v) stays in force
    # Lowered before the handler is imported, so the whole invocation runs under it; a delivery
    # cannot raise it again (the hard limit drops too).
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    event = json.loads(sys.stdin.buffer.read())
    if ctx.get("cold_start"):
        time.sleep(float(ctx["cold_start"]))  # the injected start-up delay, before the handler loads
    context = LambdaContext(
        function_name=ctx["function_name"],
        memory_limit_in_mb=ctx["memory_limit_in_mb"],
        aws_request_id=ctx["aws_request_id"],
        deadline=ctx["deadline"],
    )
    try:
        module_name, fn_name = ctx["handler"].split(":")
        handler = getattr(importlib.import_module(module_name), fn_name)
        reply: dict[str, Any] = {"ok": True, "response": handler(event, context)}
        status = 0
    except BaseException as exc:  # the handler raised: Lambda reports it as an Unhandled function error
        reply = {
            "ok": False,
            "errorType": type(exc).__name__,
            "errorMessage": str(exc),
            "stackTrace": traceback.format_exception(exc),
        }
        traceback.print_exc()
        status = 1
    tmp = f"{response_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(reply, f, default=str)
    os.replace(tmp, response_path)
    sys.stdout.flush()
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    if sys.argv[1:] == ["run"]:
        sys.exit(_run_delivery())
    print("usage: python -m mrkit.backends.aws_lambda.emulator run", file=sys.stderr)
    sys.exit(2)
