"""The lease of a serverless job's phase change: held by one live invocation at a time.

Why a lease and not a guard holding the request id: see :mod:`.jobs`. The lease's generations are
keys under :func:`mrkit.backends.aws_lambda.wire.lease_prefix`.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from mrkit.storage.base import Storage

LEASE_SECONDS = 30.0  # a phase change's lease (shorter for functions whose timeout is short)


def lease_seconds(function_timeout: float) -> float:
    """The lease of a job's phase changes: a quarter of the function's timeout, 1 to 30 seconds, so
    that a retry of a dead holder can wait one lease out and still do the step in its own time.

    >>> lease_seconds(900), lease_seconds(20)
    (30.0, 5.0)
    """
    return max(1.0, min(LEASE_SECONDS, function_timeout / 4))


class _StepLease:
    """The right to run one phase change of a job, held by one live invocation at a time.

    Generation ``n`` of the lease is the key ``{prefix}g{n}``, created with ``put_if_absent`` and
    holding a token unique to its holder, which rewrites it every ``seconds / 4`` while it works.
    Whoever finds generation ``n`` taken watches it (polling, bounded by one lease):

    * the step's ``done`` test turns true: nothing to do;
    * the key changes: its holder is alive (and if it dies later, Lambda's retry of *its* event
      comes back here): nothing to do;
    * it stays unchanged for a whole lease: its holder is dead; take generation ``n + 1``.

    Liveness is judged by observed change, on this process's clock, never by comparing timestamps
    written by other machines. A holder checks :meth:`held` before irreversible work: a slow holder
    presumed dead and replaced steps aside.
    """

    def __init__(self, storage: Storage, key: str, next_key: str, record: dict[str, Any], seconds: float):
        self.storage, self.key, self.next_key = storage, key, next_key
        self._record, self._seconds = record, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="mrkit-lease", daemon=True)
        self._thread.start()

    @classmethod
    def take(
        cls, storage: Storage, prefix: str, request_id: str, *, seconds: float, done: Any
    ) -> _StepLease | None:
        """Take the lease, or return None when the step is done or a live invocation holds it."""
        import uuid

        record = {"token": uuid.uuid4().hex, "request_id": request_id, "renewals": 0}
        n = 0
        while True:
            key = f"{prefix}g{n}"
            if storage.put_if_absent(key, json.dumps(record).encode()):
                return cls(storage, key, f"{prefix}g{n + 1}", record, seconds)
            if storage.exists(f"{prefix}g{n + 1}"):
                n += 1  # superseded generation
                continue
            if cls._watch(storage, key, seconds, done) != "dead":
                return None
            n += 1

    @staticmethod
    def _watch(storage: Storage, key: str, seconds: float, done: Any) -> str:
        first = storage.get_or_none(key)
        until = time.monotonic() + seconds
        pause = min(0.25, seconds / 8)
        while True:
            if done():
                return "done"
            now = storage.get_or_none(key)
            if now != first:
                return "alive"  # renewed (or the job's state was discarded: it ended)
            if time.monotonic() > until:
                return "dead"
            time.sleep(pause)

    def _renew(self) -> None:
        while not self._stop.wait(self._seconds / 4):
            if self.storage.exists(self.next_key):
                return  # replaced: stop claiming to be alive
            self._record["renewals"] += 1
            try:
                self.storage.put(self.key, json.dumps(self._record).encode())
            except Exception:  # a failed renewal is retried at the next tick; one lease of them is death
                continue

    def held(self) -> bool:
        """False once another invocation took the next generation (we were presumed dead)."""
        return not self.storage.exists(self.next_key)

    def release(self) -> None:
        """Stop renewing (the key stays: the step's done marker, not the lease, says it finished).

        Joined, not left to run: on AWS a sandbox is frozen after the handler returns and thawed
        for the next invocation, where a leftover renewal would keep a dead holder looking alive.
        """
        self._stop.set()
        self._thread.join()
