"""Run tasks on a Dask distributed cluster: ``dask``, ``dask://host:port``, ``tls://host:port`` or a
``distributed.Client``.

The contract (:class:`DaskExecutor`, the same as every executor's, :mod:`mrkit.execution.base`):

* ``submit(spec)`` submits ``run_attempt(spec)`` (:mod:`mrkit.backends.dask.tasks`) as one Dask task
  with a unique key (``pure=False``) and returns a :class:`concurrent.futures.Future` of its
  :class:`~mrkit.model.task.TaskResult`. A raising user function is a result (``ok=False``); the
  future raises only :class:`~mrkit.errors.WorkerLost`: the worker died (``KilledWorker``), the
  scheduler went away, or the executor shut down.
* Dask never retries on its own behalf: ``retries=0`` on every task, so mrkit's ``RetryPolicy``
  decides and counts attempts. The local cluster also runs its scheduler with
  ``allowed_failures=0``, so a killed worker fails its attempt at once (``KilledWorker``), along
  with any the scheduler had already sent it to run next, and the driver's next attempts show in
  the counters (``*.attempts_lost``). A scheduler of yours re-runs a task whose worker died
  up to its ``distributed.scheduler.allowed-failures`` times (3 by default) before saying so; each
  run claims a delivery number in storage first, so a re-run reports the runs lost before it
  (``TaskResult.lost_deliveries``, counted as launched and lost attempts), and it is harmless: a
  re-run writes under the same attempt's keys and commits first-writer-wins like any attempt
  (docs/dask.md).
* Data moves through storage, not through the scheduler: tasks carry references and return
  counters. ``local`` is True only when every Dask worker listens on a loopback address (checked
  when the executor connects; workers that join later are not looked at); otherwise
  ``mrkit.run`` needs ``storage=`` (and an output) every worker reaches, and a local folder given
  as ``storage=`` is refused.

Security: the cluster ``dask`` starts listens on 127.0.0.1 only (its dashboard too). A ``dask://``
(plain ``tcp://``) scheduler is unauthenticated: anyone who reaches its port runs code on its
workers. Use ``tls://`` with a ``distributed.security.Security`` (``security=`` or the usual Dask
configuration) for a scheduler on a network.

Why one module of about 600 lines: the executor's submit, its batching of futures-API calls, its
queue of attempts waiting beside the workers (``queue_ahead``, ``_mark_running``), its result pump,
its client watcher and its shutdown share one table of pending attempts and its lock; the local
cluster's start-up (its batch settings, and the caller's environment it restores) is its only other
part.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from concurrent.futures import Future
from typing import Any

from mrkit.errors import ConfigError, MissingExtra, WorkerLost
from mrkit.execution.base import Executor
from mrkit.model.task import TaskKind, TaskResult, TaskSpec
from mrkit.security import is_loopback

try:
    import dask.config
    from distributed import Client, KilledWorker, LocalCluster, as_completed
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtra("the dask executor", "dask", "distributed") from exc

from mrkit.backends.dask.tasks import run_attempt, run_attempts  # noqa: E402 - imports distributed: after the check

# How long to wait for a scheduler to answer and for its first worker to join.
CONNECT_TIMEOUT = 30.0
# How often a thread checks that the client is still open while attempts are pending.
_WATCH_SECONDS = 0.5
# How long shutdown waits for each helper thread to end (they end within one _WATCH_SECONDS tick;
# the bound only keeps a wedged client from hanging the caller).
_HELPER_JOIN_SECONDS = 5.0
_MAX_BATCH = 32  # futures-API calls in one Dask task, at most (see DaskExecutor._send_calls)
#: The Dask configuration of the local cluster ``dask`` starts (a cluster of yours keeps its own;
#: docs/dask.md shows the same settings for ``dask worker``). A worker runs its tasks in a thread
#: beside its event loop, and the loop's timers take the GIL from the running task: the
#: statistical profiler every 10 ms, the tick every 20 ms, the system monitor every 0.5 s. With
#: them off or slower, a 3 MB word-count map task took 160-173 ms instead of 182-193 ms
#: (processes: 150-160 ms). The cost: no profile page in the dashboard, host metrics every 2 s.
#: And the nannies do not set glibc's ``MALLOC_TRIM_THRESHOLD_`` (Dask's default: 65536) in the
#: workers: setting it, to any value, also fixes glibc's mmap threshold, so every allocation of
#: 128 KiB or more is a fresh mmap whose pages fault in again. Without it an ad-revenue map attempt
#: took 170 ms instead of 185 (median of 80 each, alternating clusters). The cost, a worker returns
#: freed memory to the system less eagerly, does not matter to a cluster that lives for one run.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,  # None: not set (see above)
}


class DaskExecutor(Executor):
    """Runs attempts as Dask tasks.

    ``asynchronous``: a cluster that outlives this process (``dask://``, ``tls://``, a Client) runs
    submitted jobs without it, through the Dask job service
    (:mod:`mrkit.backends.aws_lambda.dask_jobs`); the local cluster ``dask`` sets it False.

    Args:
        client: a connected ``distributed.Client`` (yours: :meth:`shutdown` leaves it open), or None
            to connect to ``address`` or, without one, start a local cluster.
        address: a scheduler address, ``tcp://host:port`` or ``tls://host:port``.
        workers: the local cluster: how many worker processes to start (one thread each; default
            every core). A running cluster: the parallelism mrkit plans task counts for (default:
            its workers' threads when connecting); it starts or stops nothing.
        security: a ``distributed.security.Security`` for ``tls://`` (default: Dask's configuration).
        storage: intermediate storage URL every worker reaches (returned by :meth:`storage_url`);
            required by ``mrkit.run`` when some worker is not on this machine.
        name: the executor string it was built from (for messages).

    Raises:
        ConfigError: a bad option, an unreachable scheduler, a scheduler with no worker, or a local
            ``storage=`` folder with workers on other hosts.
    """

    asynchronous = True
    # One attempt queued beside each worker thread (Executor.queue_ahead): a thread that ends an
    # attempt starts the next at once instead of after a round trip through the scheduler, the
    # client and the driver (~12 ms on two busy cores, ~8% of a 3 MB map task). Dask futures have
    # no "started" state, so this executor marks its futures running itself (_mark_running).
    reports_running = True

    def __init__(
        self,
        client: Client | None = None,
        *,
        address: str | None = None,
        workers: int | None = None,
        security: Any = None,
        storage: str | None = None,
        name: str | None = None,
    ) -> None:
        self._cluster: Any = None
        self._environ: dict[str, str | None] | None = None  # the caller's, before a local cluster
        self._owns_client = client is None
        self._storage = storage
        self._lock = threading.Lock()
        # Dask future -> [(spec, our future)] of the attempts it runs, until resolved; cancelled at
        # shutdown, failed when the client closes under us (see _watch_client).
        self._pending: dict[Any, list[tuple[TaskSpec, Future[TaskResult]]]] = {}
        # futures-API calls waiting for _send_calls, and its thread (started by the first call)
        self._calls: list[tuple[TaskSpec, Future[TaskResult]]] = []
        self._calls_ready = threading.Event()
        self._batcher: threading.Thread | None = None
        # Set by shutdown: submit refuses, the helper threads (batcher, pump, watch) end on it, and
        # shutdown joins them, so that a caller is single-threaded again once the executor is shut
        # down (read_output then streams the output through a forked child, which a process with
        # threads cannot).
        self._closed = threading.Event()
        self._helpers: list[threading.Thread] = []
        self._dashboard: str | None = None  # the dashboard link once looked up ("" for none)
        self._completed: Any = None  # distributed.as_completed of the pending tasks (see _pump)
        self._wake = threading.Event()  # set by submit: the pump has work
        # Job attempts sent and not yet taken to be running (oldest first), and those taken to be
        # running: at most one per worker thread of the cluster (see _mark_running).
        self._waiting: collections.deque[Future[TaskResult]] = collections.deque()
        self._running: set[Future[TaskResult]] = set()
        self._threads = 1
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ConfigError(f"workers must be a positive integer, got {workers!r}")
        if client is not None:
            if address is not None:
                raise ConfigError("give either a distributed.Client or an address=, not both")
            self.client = client
        elif address is None:
            self._environ = _nanny_environ()
            try:
                self._cluster, self.client = _start_local_cluster(workers, security)
            except BaseException:
                _restore_environ(self._environ)
                raise
        else:
            try:
                self.client = Client(address, security=security, timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        self.name = name or ("dask" if self._cluster is not None else _executor_string(self._address()))
        # The local cluster stops with this process: there a submitted job is a background run, as
        # on processes (see the class attribute).
        self.asynchronous = self._cluster is None
        try:
            self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError as exc:
            self.shutdown()
            raise ConfigError(
                f"the Dask scheduler at {self._address()} has no worker after {CONNECT_TIMEOUT:.0f} s: "
                "start some with `dask worker ADDRESS`"
            ) from exc
        nthreads = self.client.nthreads()
        running = self._cluster is None
        self._threads = max(1, sum(nthreads.values()))
        self.workers = workers if running and workers else self._threads
        self.queue_ahead = self._threads
        self.local = all(is_loopback(_host(addr)) for addr in nthreads)
        self._hosts = sorted({_host(addr) for addr in nthreads})
        if storage:
            try:
                self._refuse_local_folder(storage, "storage=")
            except ConfigError:
                self.shutdown()
                raise

    @classmethod
    def from_name(cls, name: str, *, workers: int | None = None, **options: Any) -> DaskExecutor:
        """Build from ``dask``, ``dask://host:port`` or ``tls://host:port``.

        Args:
            name: the executor string; ``dask://`` is the plain (unauthenticated) ``tcp://`` protocol.
            workers: as for :class:`DaskExecutor`.
            options: :class:`DaskExecutor` keyword arguments (``security``, ``storage``, ``client``).

        Raises:
            ConfigError: for another name, or as :class:`DaskExecutor`.
        """
        client = options.pop("client", None)
        if name == "dask":
            return cls(client, workers=workers, name=name, **options)
        for scheme, protocol in (("dask://", "tcp://"), ("tls://", "tls://")):
            if name.startswith(scheme) and len(name) > len(scheme):
                return cls(address=protocol + name[len(scheme) :], workers=workers, name=name, **options)
        raise ConfigError(
            f"DaskExecutor is selected by 'dask', 'dask://host:port' or 'tls://host:port', got {name!r}"
        )

    @classmethod
    def from_client(cls, client: Client, **options: Any) -> DaskExecutor:
        """Run on a ``distributed.Client`` you connected; :meth:`shutdown` leaves it open."""
        return cls(client, **options)

    # -- the executor contract ------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        """Submit one attempt as a Dask task; the future resolves to its :class:`TaskResult`.

        A futures-API call (a CALL task) may share its Dask task with other calls submitted meanwhile
        (see :meth:`_send_calls`): Dask spends about 2 ms of scheduling on every task, far more than a
        tiny call costs.

        Raises:
            RuntimeError: after :meth:`shutdown`.
        """
        if self._closed.is_set():
            raise RuntimeError("cannot submit to a DaskExecutor after shutdown()")
        future: Future[TaskResult] = Future()
        if self.client.status in ("closing", "closed"):
            future.set_exception(self._lost(spec, "the Dask client is closed (its scheduler went away)"))
            return future
        if spec.kind is TaskKind.CALL:
            batcher = None
            with self._lock:
                self._calls.append((spec, future))
                if self._batcher is None:
                    batcher = self._batcher = threading.Thread(
                        target=self._send_calls, name="mrkit-dask-calls", daemon=True
                    )
            if batcher is not None:
                self._helpers.append(batcher)
                batcher.start()
            self._calls_ready.set()
            return future
        self._send([(spec, future)])
        return future

    def _send(self, group: list[tuple[TaskSpec, Future[TaskResult]]]) -> None:
        """Submit ``group`` as one Dask task (``run_attempt``, or ``run_attempts`` for several)."""
        first = group[0][0]
        salt = os.urandom(4).hex()
        task: Any
        try:
            if len(group) == 1:
                key = f"mrkit-{first.job_id}-{first.task_id}-a{first.attempt}-{salt}"
                task = self.client.submit(run_attempt, first, key=key, pure=False, retries=0)
            else:
                key = f"mrkit-{first.job_id}-calls-{first.task_id}-x{len(group)}-{salt}"
                specs = [spec for spec, _ in group]
                task = self.client.submit(run_attempts, specs, key=key, pure=False, retries=0)
        except Exception as exc:  # a closed client or a lost scheduler: the infrastructure failed
            for spec, future in group:
                with contextlib.suppress(Exception):  # cancelled by the driver meanwhile
                    future.set_exception(self._lost(spec, f"could not submit to the Dask scheduler ({exc})"))
            return
        with self._lock:
            self._pending[task] = group
            if len(group) == 1 and first.kind is not TaskKind.CALL:
                self._waiting.append(group[0][1])
                self._mark_running()
            if self._completed is None:
                self._completed = as_completed()
                for target, label in (
                    (self._pump, "mrkit-dask-results"),
                    (self._watch_client, "mrkit-dask-watch"),
                ):
                    helper = threading.Thread(target=target, name=label, daemon=True)
                    self._helpers.append(helper)
                    helper.start()
            self._completed.add(task)
        self._wake.set()
        if len(group) == 1:
            # The driver cancels an attempt it abandoned: drop the Dask task too if it has not run.
            group[0][1].add_done_callback(lambda f: task.cancel() if f.cancelled() else None)

    def _send_calls(self) -> None:
        """Send the queued futures-API calls, several to a Dask task when many are queued.

        Calls queue up while the previous ones are being sent, so a caller submitting in a loop gets
        batches on its own, and a lone call goes at once. A batch is at most :data:`_MAX_BATCH`
        calls, and the queue is cut in at least twice as many batches as the cluster has threads, so
        that long calls still spread over every worker.
        """
        while not self._closed.is_set():
            self._calls_ready.wait(_WATCH_SECONDS)
            self._calls_ready.clear()
            with self._lock:
                calls, self._calls = self._calls, []
            if not calls:
                continue
            size = max(1, min(_MAX_BATCH, -(-len(calls) // (2 * self.workers))))
            for i in range(0, len(calls), size):
                self._send(calls[i : i + size])

    def _pump(self) -> None:
        """Deliver finished attempts' results, a batch at a time.

        Why not a done-callback per Dask future: each callback would fetch its one result with a
        blocking round trip from Dask's single callback thread; ``as_completed`` hands over every
        attempt finished meanwhile, and one ``gather`` fetches their results together (tiny
        futures-API tasks run about 1.5 times faster this way).
        """
        completed = self._completed
        assert completed is not None
        while not self._closed.is_set():
            try:
                batch = completed.next_batch(block=True)
            except StopIteration:  # nothing in flight: sleep until the next submit
                self._wake.wait(_WATCH_SECONDS)
                self._wake.clear()
                continue
            finished = [t for t in batch if t.status == "finished"]
            try:
                values = self.client.gather(finished) if finished else []
            except Exception:  # a result lost meanwhile (its worker died): resolve one by one
                finished, values = [], []
            delivered = set()
            for task, value in zip(finished, values, strict=True):
                self._deliver(task, value if isinstance(value, list) else [value])
                delivered.add(id(task))
            for task in batch:
                if id(task) not in delivered:
                    self._resolve(task)

    def _mark_running(self) -> None:
        """Take the oldest waiting attempts to be running while the cluster has a thread free for
        them (call with the lock held).

        Dask tells a client when a task ends, not when it starts: an attempt is taken to start when
        a thread frees up (an earlier attempt of this executor ended), as the scheduler then hands
        it the next. The driver times attempts from that moment (``reports_running``), so waiting
        in the queue never counts toward ``task_timeout`` or speculation; and a waiting attempt can
        still be cancelled (a running one cannot: Dask does not stop a task that runs).
        """
        while self._waiting and len(self._running) < self._threads:
            future = self._waiting.popleft()
            with contextlib.suppress(RuntimeError):  # resolved meanwhile (shutdown, lost client)
                if future.set_running_or_notify_cancel():
                    self._running.add(future)

    def _deliver(self, task: Any, results: list[TaskResult] | None, why: str = "") -> None:
        """Resolve the futures of ``task``'s attempts with ``results``, or as lost (``why``)."""
        with self._lock:
            group = self._pending.pop(task, None)
            if group is not None and len(group) == 1:
                future = group[0][1]
                self._running.discard(future)
                with contextlib.suppress(ValueError):
                    self._waiting.remove(future)  # ended before it was taken to run (cancelled, lost)
                self._mark_running()
        if group is None:
            return
        for i, (spec, future) in enumerate(group):
            with contextlib.suppress(Exception):  # cancelled by the driver meanwhile: nobody waits for it
                if results is None:
                    future.set_exception(self._lost(spec, why))
                else:
                    future.set_result(results[i])

    def _resolve(self, task: Any) -> None:
        """Fetch the outcome of ``task`` (finished, failed or cancelled) on its own and deliver it."""
        with self._lock:
            if task not in self._pending:
                return
        try:
            value = task.result(timeout=CONNECT_TIMEOUT)
        except KilledWorker as exc:
            self._deliver(task, None, f"its Dask worker died ({exc})")
        except BaseException as exc:  # cancelled (scheduler lost, shutdown) or a transport error
            self._deliver(task, None, f"Dask did not run it ({type(exc).__name__}: {exc})")
        else:
            self._deliver(task, value if isinstance(value, list) else [value])

    def _watch_client(self) -> None:
        """Fail every pending attempt with WorkerLost once the client has closed under us.

        Why a thread that polls: when the scheduler goes away, the client cancels the futures it had
        (the pump sees them complete), tries to reconnect for its timeout, then closes -- and the
        futures submitted *while* it was reconnecting are dropped with it and never complete (the
        client's event loop is gone). Without this, the driver would wait for them forever.
        """
        while not self._closed.wait(_WATCH_SECONDS):
            if self.client.status not in ("closing", "closed"):
                continue
            time.sleep(_WATCH_SECONDS)  # let the pump deliver what still completed, first
            with self._lock:
                stranded = [pair for group in self._pending.values() for pair in group] + self._calls
                self._pending.clear()
                self._waiting.clear()
                self._running.clear()
                self._calls = []
            for spec, future in stranded:
                if not future.done():
                    with contextlib.suppress(Exception):  # cancelled by the driver meanwhile
                        future.set_exception(self._lost(spec, "the Dask scheduler went away"))

    def _lost(self, spec: TaskSpec, why: str) -> WorkerLost:
        return WorkerLost(
            f"attempt {spec.attempt} of {spec.task_id} was lost: {why}",
            task_id=spec.task_id,
            attempt=spec.attempt,
            worker=self._address(),
        )

    def check_reachable(self, url: str, *, option: str = "storage=") -> None:
        """Refuse, in one sentence, a storage or output location (given as ``option``) that the Dask
        workers cannot reach: ``memory://`` (every worker is a process of its own), or a folder of
        this machine when some worker runs on another host (checked against the workers seen when
        the executor connected).

        Raises:
            ConfigError: naming the location, the hosts and what to give instead.
        """
        if url.startswith("memory://"):
            raise ConfigError(
                f"Dask workers are other processes and cannot reach {option}{url}: give a folder or s3://"
            )
        self._refuse_local_folder(url, option)

    def _refuse_local_folder(self, url: str, option: str) -> None:
        """A folder of this machine, when some worker runs on another host: one sentence."""
        if not self.local and "://" not in url.split("#", 1)[0]:
            raise ConfigError(
                f"{option}{url!r} is a folder on this machine, but Dask workers run on other hosts "
                f"({', '.join(self._hosts)}): give {option} a URL they all reach (s3://bucket/prefix, "
                "or file:///path on a shared file system)"
            )

    def storage_url(self, job_id: str) -> str | None:
        """The ``storage=`` URL given to the executor, or None (a local temp folder when ``local``)."""
        return self._storage

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard page, or None when it serves none.

        Asked once per executor: the scheduler lists its HTTP server as ``dashboard`` even when the
        page is off (``--no-dashboard``, or no ``bokeh``), so the page itself is fetched (one GET, at
        most a second) and a link that would answer 404 is never shown.
        """
        if self._dashboard is None:
            self._dashboard = _served_dashboard(self.client) or ""
        return self._dashboard or None

    @property
    def lasting_dashboard_link(self) -> str | None:
        """:attr:`dashboard_link` when the cluster outlives this executor (a scheduler or client of
        yours), None for the local cluster it started (gone when it shuts down): what a run's
        summary line names."""
        return None if self._cluster is not None else self.dashboard_link

    def shutdown(self, wait: bool = True) -> None:
        """Cancel this executor's pending tasks; close the client and cluster it opened (not yours)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            pending = list(self._pending)
            completed = self._completed
            unsent, self._calls = self._calls, []
        for spec, future in unsent:
            with contextlib.suppress(Exception):
                future.set_exception(self._lost(spec, f"executor {self.name} shut down before it ran"))
        self._calls_ready.set()
        if completed is not None:
            completed.clear()  # lets the pump thread see that nothing is left, and end
        self._wake.set()
        if pending and self.client.status not in ("closing", "closed"):
            self.client.cancel(pending)
        if self._owns_client:
            # Client first, then the cluster it runs on: the reverse order makes the client log
            # (and warn about) a lost scheduler while it closes.
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()
            if self._environ is not None:
                _restore_environ(self._environ)
        if wait:
            for helper in self._helpers:
                if helper is not threading.current_thread():
                    helper.join(_HELPER_JOIN_SECONDS)

    def _address(self) -> str:
        return str(getattr(self.client.scheduler, "address", "") or "?")


def _served_dashboard(client: Any) -> str | None:
    """The link of the dashboard page ``client``'s scheduler serves, or None (see dashboard_link)."""
    import urllib.error
    import urllib.request

    try:
        info = client.scheduler_info(n_workers=0)
        if not info.get("services", {}).get("dashboard"):
            return None
        link = str(client.dashboard_link)
        with urllib.request.urlopen(link, timeout=1.0) as response:  # noqa: S310 - the scheduler's own http URL
            return link if response.status == 200 else None
    except (Exception, urllib.error.URLError):
        return None


def _start_local_cluster(workers: int | None, security: Any) -> tuple[Any, Client]:
    """A ``LocalCluster`` of ``workers`` single-threaded processes on 127.0.0.1, and its client."""
    if workers is None:
        workers = os.cpu_count() or 1
    try:
        with dask.config.set(LOCAL_CLUSTER_CONFIG):  # read by the workers' nannies as they start
            cluster = _local_cluster(workers, security)
    except RuntimeError as exc:
        if not _spawn_bootstrap_error(exc):
            raise
        raise ConfigError(
            "the Dask local cluster ('dask') starts its workers with multiprocessing's spawn, which "
            "re-imports your script in each of them: put the code that runs the job under "
            "`if __name__ == \"__main__\":` (or use executor='processes', which needs no guard)"
        ) from exc
    try:
        return cluster, Client(cluster)
    except BaseException:
        cluster.close()
        raise


def _local_cluster(workers: int, security: Any) -> Any:
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,  # one attempt per process, as on `processes`: no GIL shared
        processes=True,
        host="127.0.0.1",  # never reachable from the network
        dashboard_address="127.0.0.1:0",  # its HTTP server (health, dashboard): loopback, any port
        security=security,
        # A dead worker fails its attempt at once; mrkit's retry policy decides and counts.
        scheduler_kwargs={"allowed_failures": 0},
    )


def _nanny_environ() -> dict[str, str | None]:
    """This process's values of the variables Dask's nannies set in it (``os.environ.update``)
    before spawning each worker: ``PYTHONHASHSEED=6640`` and ``distributed.nanny.pre-spawn-environ``
    (``OMP_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``...). A local cluster's nannies run in the
    caller's process, so without a restore the caller's environment, and every process it starts
    later (``processes`` workers included), would keep them."""
    names = {"PYTHONHASHSEED", *(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})}
    return {name: os.environ.get(name) for name in names}


def _restore_environ(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _spawn_bootstrap_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is multiprocessing's "bootstrapping phase" error: a
    script without a ``__main__`` guard started processes again from its re-import in a child."""
    seen: BaseException | None = exc
    while seen is not None:
        if "bootstrapping phase" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _executor_string(address: str) -> str:
    """The executor string that reaches a scheduler address: ``tcp://h:p`` -> ``dask://h:p``."""
    return "dask://" + address.removeprefix("tcp://") if address.startswith("tcp://") else address


def _host(address: str) -> str:
    """``tcp://10.0.0.5:40123`` -> ``10.0.0.5`` (IPv6 brackets removed)."""
    rest = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return rest.strip("[]")
