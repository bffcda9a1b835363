"""The workers' side of asynchronous Redis jobs: run a job's stream entry, then apply its transition.

:func:`process_entry` is called by the fleet's worker loop (:mod:`mrkit.backends.redis.worker`) for
every entry of a job stream: a task attempt (run it, then COMMIT or FAIL it through the scripts of
:mod:`mrkit.backends.redis.job_state`), or the job's publish step. It also holds what a worker does
when an entry is stale (an earlier run of a resumed job), late (its job ended) or lost (Redis lost
the job). The state machine itself is described in :mod:`mrkit.backends.redis.job_state`.

About 600 lines: running a task and publishing share the stale/late/lost handling and the job's
end, which must agree on every path.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

from mrkit.backends.redis.job_events import record_end, record_from_running, start_attempt
from mrkit.backends.redis.job_state import (
    DEFAULT_TTL,
    LOG_MAXLEN,
    JobKeys,
    lost_message,
)
from mrkit.backends.redis.wire import GROUP, QUEUES, WORKER_GONE_MS, key, now_ms
from mrkit.coordination.publish import publish_output
from mrkit.errors import (
    StorageError,
)
from mrkit.execution.runtime import delete_attempt_files, storage_for
from mrkit.model import layout
from mrkit.model.task import TaskFailure, TaskKind, TaskSpec, failure_message_parts
from mrkit.storage.base import Storage
from mrkit.storage.redis import glob_escape, redact

# -- the worker side ---------------------------------------------------------------------------


def log_fields(task: str, attempt: int, worker: str, kind: str, text: str) -> dict[str, Any]:
    return {
        "t": f"{time.time():.3f}",
        "task": task,
        "attempt": attempt,
        "worker": worker,
        "kind": kind,
        "text": text,
    }


def log_event(client: Any, job_id: str, task: str, attempt: int, worker: str, kind: str, text: str) -> None:
    """Append one line to the job's log stream (trimmed to about ``LOG_MAXLEN`` entries)."""
    client.xadd(
        key(job_id, "logs"),
        log_fields(task, attempt, worker, kind, text),
        maxlen=LOG_MAXLEN,
        approximate=True,
        nomkstream=True,
    )


def note_refused(worker: Any, job_id: str, entry_id: bytes, reason: str) -> None:
    """A worker refused an entry of ``job_id``'s stream: log it, and count it in the job's state.

    The count shows in ``mrkit status``: a job whose every entry is refused (submitter and workers
    do not share one secret) would otherwise look like a job no worker has reached yet.
    """
    log_event(
        worker.client, job_id, "", 0, worker.name, "event", f"refused entry {entry_id.decode()}: {reason}"
    )
    worker.scripts["refused"](keys=[key(job_id, "state")])


def entry_run(fields: dict[bytes, bytes]) -> int:
    """The run an entry belongs to (its header's ``run``; 1 for entries of an older mrkit)."""
    head = fields.get(b"p", b"").partition(b"\n")[0]
    try:
        header = json.loads(head)
        return int(header.get("run", 1)) if isinstance(header, dict) else 1
    except (ValueError, TypeError):
        return 1


def process_entry(
    worker: Any,
    stream: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    header: dict[str, Any],
    body: bytes,
    reclaimed: bool,
    lease_ms: int,
) -> None:
    """Run one verified entry of an asynchronous job's stream on ``worker`` and advance the job.

    Args:
        worker: the :class:`~mrkit.backends.redis.worker.RedisWorker` (client, name, host, run_spec...).
        stream, entry_id: where the entry is (it is acked here, or left pending for a reclaimer).
        fields: the entry as read (re-queued unchanged when a failed task is retried).
        header, body: its verified content.
        reclaimed: the entry was taken over from a worker whose lease expired.
        lease_ms: the stream's lease, for messages.
    """
    job_id = str(header.get("job", ""))
    k = JobKeys(job_id)
    if stream != k.tasks:
        worker.reject(stream, entry_id, f"entry names job {job_id!r} but sits in {stream}")
        return
    try:
        if header["op"] == "publish":
            _run_publish(worker, k, entry_id, reclaimed, int(header.get("run", 1)))
        else:
            try:
                spec = TaskSpec.decode(body)
            except Exception as exc:  # signed, yet not a task of this mrkit (another version?)
                worker.reject(stream, entry_id, f"undecodable task: {type(exc).__name__}: {exc}")
                return
            if spec.job_id != job_id:
                worker.reject(stream, entry_id, f"task of job {spec.job_id} in the stream of job {job_id}")
                return
            _run_task(worker, k, entry_id, spec, fields, reclaimed, lease_ms)
    finally:
        worker.done_with(stream, entry_id)


def _run_task(
    worker: Any,
    k: JobKeys,
    entry_id: bytes,
    spec: TaskSpec,
    fields: dict[bytes, bytes],
    reclaimed: bool,
    lease_ms: int,
) -> None:
    client = worker.client
    phase = spec.kind.value
    pipe = client.pipeline(transaction=False)
    pipe.hmget(k.state, "state", "max_attempts", "max_lost", "phase", "task_timeout", "run")
    pipe.hexists(k.done(phase), spec.task_id)
    state, already = pipe.execute()
    if state[0] is None:
        _job_lost(worker, k.job, spec, entry_id)
        return
    run, current = entry_run(fields), int(state[5] or 1)
    if run != current and state[0] == b"running":
        # An entry of an earlier run of a resumed job (read ahead, redelivered or reclaimed): the
        # resume enqueued its own entry for every task still to run.
        client.xack(k.tasks, GROUP, entry_id)
        log_event(client, k.job, spec.task_id, 0, worker.name, "event", _stale_note(run, current))
        return
    if state[0] != b"running" or already:
        client.xack(k.tasks, GROUP, entry_id)  # ended, or a duplicate of a committed task
        if state[0] != b"running":
            # The job ended (cancelled, or failed) since this entry was read ahead: drop it unrun, and
            # stop reading its stream now rather than at the worker's next look at mrkit:queues.
            worker.queues.pop(k.tasks, None)
        if state[0] == b"cancelled":
            log_event(client, k.job, spec.task_id, 0, worker.name, "event", "dropped: the job was cancelled")
        return
    if spec.kind is TaskKind.REDUCE and state[3] == b"map":
        # The reduce entries are enqueued by the script that records the last map commit, atomically
        # with the phase change: one seen during the map phase is a duplicate. Running it would fail
        # (no map output yet) and use up one of the task's attempts.
        client.xack(k.tasks, GROUP, entry_id)
        log_event(client, k.job, spec.task_id, 0, worker.name, "event", "dropped: delivered before its phase")
        return
    max_attempts, max_lost = int(state[1]), int(state[2])
    if reclaimed:
        reason = (
            f"its lease of {lease_ms / 1000:g}s expired, or its worker sent no liveness beat for "
            f"{WORKER_GONE_MS / 1000:g}s: the worker died, hung or lost Redis"
        )
        if float(state[4] or 0):
            reason += f", or the attempt ran longer than task_timeout={float(state[4]):g}s"
        pipe = client.pipeline(transaction=False)
        record_from_running(pipe, worker, k, entry_id, "lost", reason)  # the attempt its holder ran
        worker.scripts["lost"](
            keys=[k.state, k.done(phase), k.tasks, k.lost],
            args=[
                GROUP,
                entry_id,
                spec.task_id,
                max_lost,
                lost_message(phase, spec.task_id, k.job, "{n}", reason),
                now_ms(),
                run,
            ],
            client=pipe,
        )
        outcome = pipe.execute()[-1]
        verdict = outcome[0].decode()
        if verdict == "lost":
            _job_lost(worker, k.job, spec, entry_id)
            return
        if verdict == "failed":
            _log_and_end(worker, k, spec, "failed", outcome[1].decode())
            return
        if verdict != "run":
            return
        log_event(client, k.job, spec.task_id, 0, worker.name, "event", f"reclaimed ({reason})")
    worker.job_places[k.job] = (spec.storage_url, spec.output_url)  # to clean up if the job is lost
    attempt, started = start_attempt(worker, k, spec, entry_id, LOG_MAXLEN)  # logs "started"
    spec = dataclasses.replace(spec, attempt=attempt)
    result, captured = worker.run_spec(spec, capture=True, entry=(k.tasks, entry_id, {}, fields))
    if result.failure is not None and worker.is_infrastructure_failure(result.failure):
        # Redis (or the storage) failed under the task, not the user's code: leave the entry pending
        # so that its lease expires and it is re-run, without consuming one of the user's attempts.
        raise worker.infrastructure_error(result.failure)
    pipe = client.pipeline(transaction=False)
    for kind, text in captured:
        pipe.xadd(
            k.logs,
            log_fields(spec.task_id, attempt, worker.name, kind, text),
            maxlen=LOG_MAXLEN,
            approximate=True,
            nomkstream=True,
        )
    record_end(pipe, worker, k, entry_id, spec, result, started)  # the attempt's event, same round trip
    if result.ok:
        # A map-only job (n_reduce=0) publishes when its last map task commits.
        next_phase = "reduce" if spec.kind is TaskKind.MAP and spec.n_reduce else "publish"
        total = spec.n_map if spec.kind is TaskKind.MAP else spec.n_reduce
        note = "committed" if result.committed else "finished; a previous attempt had committed (discarded)"
        pipe.xadd(
            k.logs,
            log_fields(spec.task_id, attempt, worker.name, "event", f"{note} in {result.seconds:.3f}s"),
            maxlen=LOG_MAXLEN,
            approximate=True,
            nomkstream=True,
        )
        worker.scripts["commit"](
            keys=[k.state, k.done(phase), k.tasks, k.trigger(next_phase), k.next(next_phase)],
            args=[GROUP, entry_id, spec.task_id, attempt, total, next_phase, now_ms(), run],
            client=pipe,
        )
        verdict = pipe.execute()[-1].decode()
        if verdict == "advanced":
            text = (
                "every map task committed: reduce phase started"
                if next_phase == "reduce"
                else f"every {spec.kind.value} task committed: publishing the output"
            )
            log_event(client, k.job, "", 0, worker.name, "event", text)
        elif verdict == "lost":
            _job_lost(worker, k.job, spec, entry_id)
        elif verdict == "ended":
            _discard_late_attempt(client, k, spec, result.committed)
        elif verdict == "stale":
            _drop_stale_attempt(client, k, spec, result.committed, run)
        return
    failure = result.failure
    assert failure is not None
    _record_failure(worker, k, entry_id, fields, spec, failure, max_attempts, pipe)


def fail_attempt(
    worker: Any,
    stream: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    spec: TaskSpec,
    failure: TaskFailure,
) -> None:
    """Count the attempt ``spec`` of ``entry_id`` as failed with ``failure`` and re-queue or fail the
    job, as a raising task would: a timed-out attempt (reported by the worker's watchdog) or one whose
    process died under it (reported by the worker's supervisor). A poison task thus fails the job
    after ``max_attempts`` instead of being retried as lost."""
    k = JobKeys(_job_of(stream))
    raw = worker.client.hget(k.state, "max_attempts")
    if raw is None:
        return  # Redis lost the job, or it ended and expired: nothing to count against
    pipe = worker.client.pipeline(transaction=False)
    record_from_running(pipe, worker, k, entry_id, "failed", failure.sentence(), spec.attempt)
    _record_failure(worker, k, entry_id, fields, spec, failure, int(raw), pipe)


def _job_of(stream: str) -> str:
    start, end = stream.find("{"), stream.find("}")
    return stream[start + 1 : end] if 0 <= start < end else ""


def _record_failure(
    worker: Any,
    k: JobKeys,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    spec: TaskSpec,
    failure: TaskFailure,
    max_attempts: int,
    pipe: Any,
) -> None:
    client = worker.client
    phase = spec.kind.value
    attempt = spec.attempt
    prefix, suffix = failure_message_parts(phase, spec, failure)
    pipe.xadd(
        k.logs,
        log_fields(spec.task_id, attempt, worker.name, "event", f"failed: {failure.sentence()}"),
        maxlen=LOG_MAXLEN,
        approximate=True,
        nomkstream=True,
    )
    worker.scripts["fail"](
        keys=[k.state, k.done(phase), k.tasks, k.failures],
        args=[
            GROUP,
            entry_id,
            worker.name,
            spec.task_id,
            int(failure.retryable),
            max_attempts,
            prefix,
            suffix,
            failure.traceback,
            fields[b"p"],
            fields.get(b"s", b""),
            now_ms(),
            entry_run(fields),
        ],
        client=pipe,
    )
    outcome = pipe.execute()[-1]
    verdict = outcome[0].decode()
    if verdict == "failed":
        _log_and_end(worker, k, spec, "failed", outcome[1].decode())
    elif verdict == "lost":
        _job_lost(worker, k.job, spec, entry_id)
    elif verdict == "stale":
        log_event(
            client,
            k.job,
            spec.task_id,
            attempt,
            worker.name,
            "event",
            "failure not counted: " + _stale_note(entry_run(fields), int(client.hget(k.state, "run") or 1)),
        )
    elif verdict == "stolen":
        # Our lease had expired and another worker holds the entry now: its outcome counts, not ours.
        log_event(
            client,
            k.job,
            spec.task_id,
            attempt,
            worker.name,
            "event",
            "failure not counted: the entry was reclaimed by another worker meanwhile",
        )


def _stale_note(run: int, current: int) -> str:
    return f"dropped: an entry of run {run}; the job was resumed as run {current}"


def _drop_stale_attempt(client: Any, k: JobKeys, spec: TaskSpec, committed: bool, run: int) -> None:
    """An attempt of an earlier run finished after the job was resumed: it counts for nothing. A
    COMMIT it won stays (first commit wins: the resumed run's attempt of the task finds it and
    records the task done); the files of an attempt that lost the race are deleted."""
    current = int(client.hget(k.state, "run") or 1)
    log_event(client, k.job, spec.task_id, spec.attempt, "", "event", _stale_note(run, current))
    if not committed:
        delete_attempt_files(spec)


def _discard_late_attempt(client: Any, k: JobKeys, spec: TaskSpec, committed: bool) -> None:
    """A task finished after its job ended (a zombie, or a task running when the job was cancelled):
    delete what this attempt wrote after the job's cleanup, and give any key it created a TTL.

    Safe when the job was published: its output parts were moved away from the attempts' keys. A
    failed or cancelled job keeps its data for :func:`resume_job`: there an attempt that won its
    task's COMMIT is kept (a resume re-uses it), and only a losing attempt's files are deleted.
    """
    try:
        if committed and client.hget(k.state, "state") in (b"failed", b"cancelled"):
            return
        delete_attempt_files(spec)
        if committed:  # the commit key was won after the cleanup had deleted the winner's
            storage_for(spec.storage_url).delete(layout.commit_key(k.job, spec.task_id))
    finally:
        expire_job(client, k.job)


def _run_publish(worker: Any, k: JobKeys, entry_id: bytes, reclaimed: bool, run: int) -> None:
    client = worker.client
    verdict = worker.scripts["publish"](keys=[k.state, k.tasks], args=[GROUP, entry_id, run]).decode()
    if verdict == "lost":
        print(
            f"mrkit worker {worker.name}: job {k.job} was lost: Redis has no record of it any more "
            "(restarted without persistence?); nothing was published",
            file=sys.stderr,
        )
        client.xack(k.tasks, GROUP, entry_id)
        return
    if verdict in ("early", "ended", "stale") or verdict.startswith("taken:"):
        if verdict != "ended":
            why = {"early": "before its phase", "stale": f"an entry of run {run}"}.get(
                verdict, f"publish step already taken by entry {verdict[6:]}"
            )
            log_event(client, k.job, "", 0, worker.name, "event", f"dropped a publish entry: {why}")
        return
    state = {kk.decode(): v.decode() for kk, v in client.hgetall(k.state).items()}
    started = time.time()
    log_event(client, k.job, "", 0, worker.name, "event", "publishing" + (" (resumed)" if reclaimed else ""))
    try:
        storage = storage_for(state["storage"])
        output = storage_for(state["output"])
        counters = collect_counters(client, k, storage, state)
        seconds = (now_ms() - int(state["submitted"])) / 1000
        summary = {"seconds": round(seconds, 3), "counters": counters}
        fmt, overwrite = state["format"], state["overwrite"] == "1"
        # The output parts are the reduce tasks', or the map tasks' for a map-only job.
        n_parts, phase = int(state["n_reduce"]), "reduce"
        if n_parts == 0:
            n_parts, phase = int(state["n_map"]), "map"
        if reclaimed:
            _resume_publish(storage, output, k.job, n_parts, fmt, summary, phase)
        else:
            publish_output(
                storage,
                output,
                k.job,
                n_parts,
                output_format=fmt,
                overwrite=overwrite,
                summary=summary,
                phase=phase,
            )
    except Exception as exc:
        if worker.is_infrastructure_error(exc):
            raise
        message = (
            f"publishing the output of job {k.job} failed on worker {worker.name} "
            f"(host {worker.host}): {type(exc).__name__}: {exc}"
        )
        if _end(worker, k, entry_id, "failed", {}, message, run) == -2:
            return
        _log_and_end(worker, k, None, "failed", message, ended=True)
        return
    counters["publish.millis"] = int((time.time() - started) * 1000)
    ended = _end(worker, k, entry_id, "done", counters, "", run)
    if ended in (-1, -2):
        return
    done = f"done in {seconds:.2f}s: output at {redact(state['output'])}"
    log_event(client, k.job, "", 0, worker.name, "event", done)
    cleanup_job(client, k.job, state, failed=False)
    worker.chain_published(k.job)  # a step of a multi-step job: submit the next step


def _resume_publish(
    storage: Storage,
    output: Storage,
    job_id: str,
    n_reduce: int,
    fmt: str,
    summary: dict[str, Any],
    phase: str = "reduce",
) -> None:
    """Finish a publish whose worker died: move the parts not yet moved, then write ``_SUCCESS``.

    ``publish_output`` is not re-run because its overwrite step would delete parts already moved.
    """
    for p in range(n_reduce):
        manifest = json.loads(storage.get(layout.commit_key(job_id, layout.task_id(phase, p))))
        if output.exists(manifest["key"]):
            output.move(manifest["key"], layout.part_key(p))
        elif not output.exists(layout.part_key(p)):
            raise StorageError(f"part {p} of job {job_id} is neither at {manifest['key']} nor in place")
    info = {"job_id": job_id, "format": fmt, "parts": n_reduce, **summary}
    output.put(layout.SUCCESS_KEY, json.dumps(info, indent=1, sort_keys=True).encode())
    output.delete_prefix(f"_temporary/{job_id}/")


def collect_counters(client: Any, k: JobKeys, storage: Storage, state: dict[str, str]) -> dict[str, int]:
    """The job's counters, as the in-process driver reports them: committed attempts' manifests
    (never a duplicate's), plus attempts launched, failed and lost per phase."""
    from mrkit.coordination.driver import PhaseStats

    pipe = client.pipeline(transaction=False)
    for name in (k.attempts, k.failures, k.lost):
        pipe.hgetall(name)
    attempts, failures, lost = ({kk.decode(): int(v) for kk, v in h.items()} for h in pipe.execute())
    counters: dict[str, int] = {}
    now = now_ms()
    bounds = {
        "map": (int(state["map_started"]), int(state.get("reduce_started", now))),
        "reduce": (int(state.get("reduce_started", now)), int(state.get("publish_started", now))),
    }
    for phase, n in (("map", int(state["n_map"])), ("reduce", int(state["n_reduce"]))):
        tasks = [layout.task_id(phase, i) for i in range(n)]
        stats = PhaseStats(
            tasks=n,
            launched=sum(attempts.get(t, 0) for t in tasks),
            failed=sum(failures.get(t, 0) for t in tasks),
            lost=sum(lost.get(t, 0) for t in tasks),
            resumed=int(state[f"resumed_{phase}"]) if f"resumed_{phase}" in state else None,
        )
        for task in tasks:
            raw = storage.get_or_none(layout.commit_key(k.job, task))
            for name, value in (json.loads(raw)["counters"] if raw else {}).items():
                stats.counters[name] = stats.counters.get(name, 0) + value
        counters.update(stats.as_counters(phase))
        counters[f"{phase}.millis"] = bounds[phase][1] - bounds[phase][0]
    return counters


def _end(
    worker: Any,
    k: JobKeys,
    entry_id: bytes | str,
    final: str,
    counters: dict[str, int],
    error: str,
    run: int,
) -> int:
    return int(
        worker.scripts["end"](
            keys=[k.state, k.tasks, QUEUES],
            args=[GROUP, entry_id, final, json.dumps(counters), error, now_ms(), run],
        )
    )


def _log_and_end(
    worker: Any, k: JobKeys, spec: TaskSpec | None, final: str, message: str, ended: bool = False
) -> None:
    """The job just failed (its state says so): log it, dequeue it, delete its data, set TTLs."""
    client = worker.client
    if not ended:
        client.zrem(QUEUES, k.tasks)
    log_event(client, k.job, spec.task_id if spec else "", 0, worker.name, "event", f"job {final}: {message}")
    state = {kk.decode(): v.decode() for kk, v in client.hgetall(k.state).items()}
    cleanup_job(client, k.job, state, failed=True)


def cleanup_job(client: Any, job_id: str, state: dict[str, str], *, failed: bool) -> None:
    """Delete a done job's intermediate data, then give every remaining key of the job its TTL.

    A failed or cancelled job keeps its intermediate data (its committed tasks' files, under
    ``{job}/`` in its storage and ``_temporary/{job}/`` beside its output) so that
    :func:`resume_job` can re-use them: in Redis (the default storage) they expire with the job's
    other keys; elsewhere they stay until a resumed run finishes or the user deletes them.
    """
    try:
        if not failed:
            storage = storage_for(state["storage"])
            for sub in ("map/", "reduce/", "input/"):
                storage.delete_prefix(f"{job_id}/{sub}")
            storage.delete(layout.job_key(job_id))
    finally:
        expire_job(client, job_id, int(state.get("ttl", DEFAULT_TTL)))


def expire_job(client: Any, job_id: str, ttl: int | None = None) -> int:
    """Set the TTL of every key of ``job_id`` that has none; returns how many were set."""
    if ttl is None:
        raw = client.hget(key(job_id, "state"), "ttl")
        ttl = int(raw) if raw else int(DEFAULT_TTL)
    keys = list(client.scan_iter(match=f"mrkit:{{{glob_escape(job_id)}}}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for name in keys:
        pipe.expire(name, ttl, nx=True)  # NX (Redis 7.0): keep an expiry already set
    pipe.execute()
    return len(keys)


def _job_lost(worker: Any, job_id: str, spec: TaskSpec, entry_id: bytes) -> None:
    job_lost(worker.name, job_id, spec.storage_url, spec.output_url, f"dropping {spec.task_id}")


def job_lost(worker_name: str, job_id: str, storage_url: str, output_url: str, what: str) -> None:
    """Redis has no state for the job (it restarted without persistence): say so, and delete what this
    worker's tasks wrote since (no TTL would ever remove it). Nothing is published.

    Args:
        worker_name: for the message.
        job_id: the lost job.
        storage_url, output_url: where its tasks wrote (from a task spec of the job; may be empty).
        what: what the worker does about it, for the message (``dropping map-00003``).
    """
    print(
        f"mrkit worker {worker_name}: job {job_id} was lost: Redis has no record of it any more "
        f"(restarted without persistence?); {what}",
        file=sys.stderr,
    )
    try:
        if storage_url:
            storage_for(storage_url).delete_prefix(f"{job_id}/")
        if output_url:
            storage_for(output_url).delete_prefix(f"_temporary/{job_id}/")
    except Exception as exc:  # best effort: the job is gone either way
        print(f"mrkit worker {worker_name}: could not delete the lost job's data: {exc}", file=sys.stderr)
