"""Multi-step jobs on a Redis fleet: the chain's record in Redis, and its advance by the fleet.

The chain itself (steps run as the one-step jobs ``J-step{k}``, advanced when a step publishes) is
:mod:`mrkit.coordination.chain`; this module stores it. Keys, under the chain's hash tag:

* ``mrkit:{J}:chain`` (HASH): ``p``/``s``, the :class:`~mrkit.coordination.chain.ChainSpec` signed
  with the fleet secret like a task entry (:func:`~mrkit.backends.redis.wire.pack`; verified before
  anything is unpickled); plain fields ``name``, ``labels`` (JSON), ``step`` (the step submitted
  last), ``state`` (running, done, failed, cancelled), ``error``, ``submitted``, ``ended``, ``ttl``.
* ``mrkit:{J}:advance{k}`` (STRING): the claim to submit step ``k`` (``SET NX``; its value the unix
  time of the claim).

``J`` is listed in ``mrkit:jobs`` like a one-step job; its steps are listed there too (``mrkit jobs``
shows the chain and hides its steps). Once the chain ends its keys get the TTL of its jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from mrkit.backends.redis.executor import RedisExecutor
from mrkit.backends.redis.job_handle import RedisJobHandle
from mrkit.backends.redis.job_state import JobKeys, check_job_id
from mrkit.backends.redis.job_steps import expire_job
from mrkit.backends.redis.wire import JOBS, key, now_ms, pack, unpack
from mrkit.coordination.chain import ChainRecord, ChainSpec, advance, submit_chain
from mrkit.coordination.chain_handle import ChainHandle
from mrkit.coordination.options import RunOptions
from mrkit.coordination.step_record import split_step_run_id
from mrkit.errors import ConfigError

# End the chain in KEYS[1] if it is running: ARGV = state, error, ended (ms). 1 when ended here.
_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'error', ARGV[2], 'ended', ARGV[3])
return 1
"""
# Record that step ARGV[1] was submitted, never moving back.
_SET_STEP = """
local step = tonumber(redis.call('HGET', KEYS[1], 'step') or '0')
if step and step < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'step', ARGV[1]) end
return 1
"""


class RedisChainStore:
    """The :class:`~mrkit.coordination.chain.ChainStore` of chain ``job_id`` in the Redis of ``client``.

    Args:
        client: a redis-py client.
        secret: the fleet secret (signs and verifies the spec).
        job_id: the chain's id.
        ttl: seconds its keys are kept once it ends (read from the record when it exists).
    """

    def __init__(self, client: Any, secret: bytes, job_id: str, ttl: float = 86400.0) -> None:
        self.client, self.secret, self.job_id = client, secret, job_id
        keys = JobKeys(job_id)
        self.key, self._one_step_state = keys.chain, keys.state
        self.ttl = ttl

    def create(self, record: ChainRecord, spec: ChainSpec) -> None:
        check_job_id(self.job_id)
        fields = pack(self.secret, {"op": "chain", "job": self.job_id}, spec.encode())
        mapping = {
            **fields,
            "name": record.name,
            "labels": json.dumps(record.labels),
            "step": record.step,
            "state": record.state,
            "submitted": int(record.submitted * 1000),
            "ttl": int(self.ttl),
        }
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(self.key, self._one_step_state)
            if pipe.exists(self.key) or pipe.exists(self._one_step_state):
                raise ConfigError(f"job {self.job_id} already exists in this Redis; choose another job id")
            pipe.multi()
            pipe.hset(self.key, mapping=mapping)
            pipe.zadd(JOBS, {self.job_id: mapping["submitted"]})
            pipe.execute()

    def read(self) -> ChainRecord | None:
        raw = self.client.hmget(self.key, "name", "labels", "step", "state", "error", "submitted", "ended")
        if raw[1] is None:
            return None
        name, labels, step, state, error, submitted, ended = (v.decode() if v else "" for v in raw)
        return ChainRecord(
            self.job_id,
            name,
            tuple(json.loads(labels)),
            int(step),
            state,
            error,
            int(submitted) / 1000,
            int(ended) / 1000 if ended else None,
        )

    def spec(self) -> ChainSpec:
        p, s = self.client.hmget(self.key, "p", "s")
        _header, body = unpack(
            self.secret, {b"p": p or b"", b"s": s or b""}, f"the record of job {self.job_id}"
        )
        return ChainSpec.decode(body)

    def claim(self, k: int) -> float | None:
        name = key(self.job_id, f"advance{k}")
        if self.client.set(name, f"{time.time():.3f}", nx=True):
            return None
        return float(self.client.get(name) or 0)

    def set_step(self, k: int) -> None:
        self.client.eval(_SET_STEP, 1, self.key, k)

    def finish(self, state: str, error: str) -> bool:
        ended = bool(self.client.eval(_FINISH, 1, self.key, state, error, now_ms()))
        if ended:
            ttl = self.client.hget(self.key, "ttl")
            expire_job(self.client, self.job_id, int(ttl) if ttl else int(self.ttl))
        return ended

    def discard(self) -> None:
        self.client.delete(self.key)
        self.client.zrem(JOBS, self.job_id)


def is_chain(client: Any, job_id: str) -> bool:
    """True when ``job_id`` names a multi-step job (a chain) in this Redis."""
    return bool(client.exists(JobKeys(job_id).chain))


def chain_of_step(client: Any, step_id: str) -> tuple[str, int] | None:
    """``(chain id, k)`` when ``step_id`` is step ``k`` of a chain in this Redis, else None."""
    found = split_step_run_id(step_id)
    return found if found is not None and is_chain(client, found[0]) else None


def chain_handle(executor: Any, job_id: str, submit_job: Callable[..., Any]) -> ChainHandle:
    """The handle of chain ``job_id`` on the Redis of ``executor`` (a
    :class:`~mrkit.backends.redis.executor.RedisExecutor`), able to advance it with ``submit_job``
    (:func:`mrkit.backends.redis.jobs.submit_job`)."""
    store = RedisChainStore(executor.client, executor.secret, job_id, executor.ttl)
    return ChainHandle(
        store,
        lambda run_id: RedisJobHandle(executor.url, run_id),
        lambda job, inputs, options: submit_job(executor, job, inputs, options),
    )


def submit_chain_job(
    executor: Any,
    job: Any,
    steps: list[Any],
    inputs: Any,
    options: RunOptions,
    submit_job: Callable[..., Any],
) -> ChainHandle:
    """Submit the multi-step ``job`` (options applied, ``steps`` its steps) as a chain; return its handle."""
    ttl = options.ttl if options.ttl is not None else executor.ttl
    job_id = submit_chain(
        lambda job_id: RedisChainStore(executor.client, executor.secret, job_id, ttl),
        lambda one, one_inputs, one_options: submit_job(executor, one, one_inputs, one_options),
        job,
        steps,
        inputs,
        options,
        workers=executor.workers,
        base=options.storage or executor.storage_url(""),
        handle_for=lambda run_id: RedisJobHandle(executor.url, run_id),
    )
    return chain_handle(executor, job_id, submit_job)


def after_publish(url: str, secret: bytes, step_id: str, submit_job: Callable[..., Any]) -> None:
    """The job ``step_id`` published on the Redis at ``url``: when it is a step of a chain, advance
    the chain (a worker calls this at the end of a publish, with the fleet ``secret``;
    :func:`mrkit.coordination.chain.advance`)."""
    if split_step_run_id(step_id) is None:
        return  # (most jobs: no connection opened)
    executor = RedisExecutor(url, workers=1, secret=secret)
    found = chain_of_step(executor.client, step_id)
    if found is None:
        return
    handle = chain_handle(executor, found[0], submit_job)
    advance(handle.store, found[1], lambda *a: submit_job(executor, *a), handle.handle_for)
