"""Asynchronous jobs on a Redis fleet: submitting one, and resuming one that failed or was cancelled.

:func:`submit_job` plans the job (the shared preamble, :func:`mrkit.coordination.prepare.prepare_submission`),
stores its state and its first phase's entries in Redis, and returns a
:class:`~mrkit.backends.redis.job_handle.RedisJobHandle` at once; the fleet advances it
(:mod:`mrkit.backends.redis.job_steps`). :func:`resume_job` puts a failed or cancelled job back to
running as a new *run*. The state machine, its keys and its scripts are in
:mod:`mrkit.backends.redis.job_state`.
"""

from __future__ import annotations

from typing import Any

from mrkit.backends.redis.chain import chain_handle, chain_of_step, is_chain, submit_chain_job
from mrkit.backends.redis.job_handle import RedisJobHandle, list_jobs, missing_job, reaching
from mrkit.backends.redis.job_state import DEFAULT_TTL, LOG_MAXLEN, JobKeys, check_job_id
from mrkit.backends.redis.job_steps import log_fields
from mrkit.backends.redis.wire import GROUP, JOBS, QUEUES, now_ms, pack, unpack
from mrkit.coordination.chain import chain_resume_refused
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.coordination.prepare import prepare_submission
from mrkit.errors import (
    AuthenticationError,
    ConfigError,
)
from mrkit.execution.runtime import storage_for
from mrkit.model import layout
from mrkit.model.status import JobStatus
from mrkit.model.steps import job_steps
from mrkit.model.task import TaskSpec
from mrkit.storage.redis import _redis, glob_escape, redact

# -- submitting --------------------------------------------------------------------------------


def submit_job(executor: Any, job: Any, inputs: Any, options: RunOptions) -> RedisJobHandle:
    """Plan ``job``, store its state and first tasks in Redis, and return at once.

    Args:
        executor: the :class:`~mrkit.backends.redis.executor.RedisExecutor` naming the Redis.
        job, inputs, options: as for :func:`mrkit.submit`. Local input paths and a local ``output``
            must be readable (writable) at the same path on every worker. ``options.ttl``: seconds
            the job's keys are kept after it ends (default: the URL's ``ttl``, else 24 h).

    Returns:
        A :class:`RedisJobHandle`.

    Raises:
        OutputExistsError: ``output`` holds a result and ``overwrite`` is False.
        ConfigError, InputError: bad options or inputs, or a job id that is taken or that Redis
            keys cannot hold.
    """
    client = executor.client

    def check_id(job_id: str) -> None:
        check_job_id(job_id)
        # A one-step job or a multi-step job (a chain) of that id: early and cheap; the
        # transaction below decides.
        taken = JobKeys(job_id)
        if client.exists(taken.state, taken.chain):
            raise _taken(job_id, executor)

    prepared = prepare_submission(job, inputs, options, executor=executor, check_id=check_id)
    job_id, plan, policy = prepared.job_id, prepared.plan, options.policy
    ttl_seconds: float = options.ttl if options.ttl is not None else getattr(executor, "ttl", DEFAULT_TTL)
    k = JobKeys(job_id)
    secret = executor.secret
    maps = [pack(secret, {"op": "task", "job": job_id, "run": 1}, spec.encode()) for spec in plan.map_specs]
    reduces = [
        pack(secret, {"op": "task", "job": job_id, "run": 1}, spec.encode()) for spec in plan.reduce_specs
    ]
    publish = pack(secret, {"op": "publish", "job": job_id, "run": 1}, b"")
    submitted = now_ms()
    state = {
        "state": "running",
        "phase": "map",
        "run": 1,
        "id": job_id,
        "name": plan.name,
        "submitted": submitted,
        "map_started": submitted,
        "n_map": plan.n_map,
        "n_reduce": plan.n_reduce,
        "storage": prepared.storage.url,
        "output": prepared.output.url,
        "in_memory": int(options.output is None),
        "format": options.output_format,
        "overwrite": int(options.overwrite),
        "max_attempts": policy.max_attempts,
        "max_lost": policy.max_lost,
        "ttl": int(ttl_seconds),
        "input_bytes": plan.input_bytes,
        "lease_ms": int(executor.lease * 1000),
        "task_timeout": policy.task_timeout or 0,
    }
    meta = {"mode": "job", "lease_ms": int(executor.lease * 1000)}
    if policy.task_timeout:
        meta["task_timeout_ms"] = int(policy.task_timeout * 1000)
    # All or nothing: a half-submitted job never exists. WATCH makes "create unless it exists" one
    # step, so two submitters given the same job_id cannot both believe they created it.
    pipe = client.pipeline(transaction=True)
    pipe.watch(k.state, k.chain)
    if pipe.exists(k.state, k.chain):
        pipe.reset()
        raise _taken(job_id, executor)
    pipe.multi()
    pipe.hset(k.state, mapping=state)
    pipe.hset(k.meta, mapping=meta)
    pipe.xgroup_create(k.tasks, GROUP, id="0", mkstream=True)
    for fields in maps:
        pipe.xadd(k.tasks, fields)
    if reduces:  # none for a map-only job (n_reduce=0): its last map commit starts the publish
        pipe.rpush(k.next("reduce"), *[v for fields in reduces for v in (fields["p"], fields["s"])])
    pipe.rpush(k.next("publish"), publish["p"], publish["s"])
    pipe.xadd(
        k.logs,
        log_fields(
            "", 0, "submitter", "event", f"submitted: {plan.n_map} map and {plan.n_reduce} reduce tasks"
        ),
        maxlen=LOG_MAXLEN,
        approximate=True,
    )
    pipe.zadd(JOBS, {job_id: submitted})
    pipe.zadd(QUEUES, {k.tasks: "+inf"})  # a job's stream stays live until the job ends
    try:
        pipe.execute()
    except _redis().WatchError:
        raise _taken(job_id, executor) from None  # another submitter created it meanwhile
    finally:
        pipe.reset()
    return RedisJobHandle(executor.url, job_id)


def _taken(job_id: str, executor: Any) -> ConfigError:
    return ConfigError(f"job {job_id} already exists in Redis at {executor.name}; choose another job id")


# -- resuming a failed or cancelled job ---------------------------------------------------------


def resume_job(executor: Any, job_id: str) -> RedisJobHandle:
    """Put the failed or cancelled job ``job_id`` back to running as its next run.

    Every task whose COMMIT (and the files it names) is still in the job's storage is kept; the
    others are enqueued again, signed for the new run, and get fresh attempt numbers (the
    ``attempts`` hash keeps counting) and a fresh attempt budget (``failures`` and ``lost`` are
    reset). The job restarts in the first phase with a task to run (``publish`` when every task
    committed). Entries of an earlier run that arrive later are dropped by every script (their
    ``run`` differs from the state's). The job's keys lose their TTL until it ends again.

    Args:
        executor: the :class:`~mrkit.backends.redis.executor.RedisExecutor` naming the Redis.
        job_id: the job's id.

    Returns:
        A :class:`RedisJobHandle` on the resumed job.

    Raises:
        ResumeRefused: Redis has no such job (never submitted there, or its keys expired), it is
            still running or done (nothing to resume), its data is gone, or it changed meanwhile.
    """
    from mrkit.coordination.resume import ResumeRefused, commit_is_whole

    client, k, secret = executor.client, JobKeys(job_id), executor.secret
    s = {kk.decode(): v.decode() for kk, v in client.hgetall(k.state).items()}
    if not s:
        _, why = missing_job(client, job_id, executor.url)
        raise ResumeRefused(f"cannot resume: {why}")
    if s["state"] in ("running", "done"):
        raise ResumeRefused(f"job {job_id} is {s['state']}: nothing to resume")
    storage, output = storage_for(s["storage"]), storage_for(s["output"])
    if not storage.exists(layout.job_key(job_id)):
        raise ResumeRefused(
            f"cannot resume job {job_id}: its code is gone from {redact(s['storage'])} (the job failed "
            "on an mrkit that deleted a failed job's data, or someone deleted it); submit it again"
        )
    n = {"map": int(s["n_map"]), "reduce": int(s["n_reduce"])}
    kept = {
        phase: [
            t
            for t in (layout.task_id(phase, i) for i in range(n[phase]))
            if commit_is_whole(storage, output, job_id, t)
        ]
        for phase in ("map", "reduce")
    }
    start = next((p for p in ("map", "reduce") if len(kept[p]) < n[p]), "publish")
    if start == "map":
        kept["reduce"] = []  # the reduce phase starts afresh; a reduce commit found later still wins
    old_run = int(s.get("run", 1))
    run = old_run + 1
    specs = _task_specs(client, k, secret)
    missing = [t for p in ("map", "reduce") for t in _task_ids(n[p], p) if t not in specs]
    if missing:
        raise ResumeRefused(
            f"cannot resume job {job_id}: no entry signed with this side's secret holds task "
            f"{missing[0]} (is MRKIT_SECRET or --secret-file the submitter's?)"
        )

    def entry(op: str, body: bytes) -> dict[str, bytes | str]:
        return pack(secret, {"op": op, "job": job_id, "run": run}, body)

    todo = (
        [specs[t] for t in _task_ids(n[start], start) if t not in kept[start]] if start != "publish" else []
    )
    first = [entry("task", body) for body in todo] if start != "publish" else [entry("publish", b"")]
    reduces = [entry("task", specs[t]) for t in _task_ids(n["reduce"], "reduce")]
    publish = entry("publish", b"")
    now = now_ms()
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(k.state)
        current = pipe.hmget(k.state, "state", "run")
        if current[0] not in (b"failed", b"cancelled") or int(current[1] or 1) != old_run:
            raise ResumeRefused(
                f"job {job_id} changed while it was being resumed (resumed elsewhere?); nothing done"
            )
        pipe.multi()
        pipe.hdel(k.state, "error", "traceback", "failed_task", "ended", "counters", "publisher")
        fields: dict[str, Any] = {
            "state": "running",
            "phase": start,
            "run": run,
            "resumed": now,
            "resumed_map": len(kept["map"]),
            "resumed_reduce": len(kept["reduce"]),
        }
        pipe.hset(k.state, mapping=fields)
        if start != "map":
            pipe.hsetnx(k.state, f"{start}_started", now)
        pipe.delete(
            k.failures, k.lost, k.done("map"), k.done("reduce"), k.trigger("reduce"), k.trigger("publish")
        )
        pipe.delete(k.next("reduce"), k.next("publish"))
        for phase in ("map", "reduce"):
            if kept[phase]:
                pipe.hset(k.done(phase), mapping={t: "resumed" for t in kept[phase]})
        if start != "map":
            pipe.set(k.trigger("reduce"), "resumed")
        if start == "publish":
            pipe.set(k.trigger("publish"), "resumed")
        if reduces:
            pipe.rpush(k.next("reduce"), *[v for f in reduces for v in (f["p"], f["s"])])
        pipe.rpush(k.next("publish"), publish["p"], publish["s"])
        for f in first:
            pipe.xadd(k.tasks, f)
        pipe.xadd(
            k.logs,
            log_fields(
                "",
                0,
                "resumer",
                "event",
                f"resumed as run {run} in the {start} phase: kept {len(kept['map'])} map and "
                f"{len(kept['reduce'])} reduce tasks, enqueued {len(first)} entries",
            ),
            maxlen=LOG_MAXLEN,
            approximate=True,
        )
        pipe.zadd(JOBS, {job_id: int(s["submitted"])})
        pipe.zadd(QUEUES, {k.tasks: "+inf"})
        try:
            pipe.execute()
        except Exception as exc:
            import redis

            if isinstance(exc, redis.WatchError):
                raise ResumeRefused(
                    f"job {job_id} changed while it was being resumed (resumed elsewhere?); nothing done"
                ) from None
            raise
    names = list(client.scan_iter(match=f"mrkit:{{{glob_escape(job_id)}}}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.persist(name)  # the job runs again: its keys get their TTL when it ends again
    pipe.execute()
    return RedisJobHandle(executor.url, job_id)


def _task_ids(count: int, phase: str) -> list[str]:
    return [layout.task_id(phase, i) for i in range(count)]


def _task_specs(client: Any, k: JobKeys, secret: bytes) -> dict[str, bytes]:
    """The encoded :class:`TaskSpec` of each task of the job, from its stream (maps) and its parked
    reduce entries, each verified with ``secret``."""
    found: dict[str, bytes] = {}
    raw = [fields for _id, fields in client.xrange(k.tasks)]
    items = client.lrange(k.next("reduce"), 0, -1)
    raw += [{b"p": items[i], b"s": items[i + 1]} for i in range(0, len(items) - 1, 2)]
    for fields in raw:
        try:
            header, body = unpack(secret, fields, "a task entry")
        except (AuthenticationError, ValueError):
            continue  # not signed with this side's secret: an injected entry, never run
        if header.get("op") != "task":
            continue
        found.setdefault(TaskSpec.decode(body).task_id, body)
    return found


class RedisJobService:
    """The :class:`~mrkit.coordination.service.JobService` of a Redis fleet (``redis://…``)."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def submit_job(self, job: Any, inputs: Any, options: RunOptions) -> JobHandle:
        applied = options.apply(job)
        steps = job_steps(applied)
        if steps is not None:  # a multi-step job: a chain of one-step jobs (mrkit.backends.redis.chain)
            with reaching(self.executor.url):
                return submit_chain_job(self.executor, applied, steps, inputs, options, submit_job)
        return submit_job(self.executor, job, inputs, options)

    def handle(self, job_id: str) -> JobHandle:
        with reaching(self.executor.url):
            if is_chain(self.executor.client, job_id):
                return chain_handle(self.executor, job_id, submit_job)
        return RedisJobHandle(self.executor.url, job_id)

    def list_jobs(self) -> list[JobStatus]:
        """Every job, newest first; a multi-step job once, as its chain (its steps are not listed)."""
        jobs = list_jobs(self.executor.url)
        with reaching(self.executor.url):
            chains = {st.id for st in jobs if is_chain(self.executor.client, st.id)}
            out = []
            for st in jobs:
                found = chain_of_step(self.executor.client, st.id)
                if found is not None and found[0] in chains:
                    continue
                out.append(chain_handle(self.executor, st.id, submit_job).status() if st.id in chains else st)
        return out

    def resume_job(self, job_id: str) -> RedisJobHandle:
        with reaching(self.executor.url):
            if is_chain(self.executor.client, job_id):
                raise chain_resume_refused(job_id)
            return resume_job(self.executor, job_id)
