"""What went wrong with an attempt on an HTTP worker, and what the executor does about it.

:class:`_Faults` (part of :class:`~.executor.HttpExecutor`): an attempt not delivered goes to the
next free worker (a bounded number of times); one lost under a driver-started worker that died is
sent again as ``attempt + 1000·k``; one refused as a replay is sent again, freshly signed; a worker
that refuses our signature is taken out of rotation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from mrkit.backends.http.auth import SECRET_ENV
from mrkit.backends.http.slots import _ExecutorState, _exit_description, _Item, _Lost, _Slot
from mrkit.errors import AuthenticationError

logger = logging.getLogger("mrkit.http")

# A driver-started worker that dies under an attempt (killed from outside: its task process runs the
# user code, so the task did not do it) is restarted and the attempt sent again, this many times per
# attempt; beyond that the attempt is lost (WorkerLost) and the driver's max_lost takes over.
_MAX_RESENDS = 10
# A resent attempt gets a number the driver never uses (attempt + k * stride), so that it writes under
# keys of its own: the copy that died may have written (even committed) under the original ones.
_RESEND_STRIDE = 1000


class _Faults(_ExecutorState):
    """The executor's answers to a failed exchange (see the module docstring)."""

    def _not_delivered(self, slot: _Slot, item: _Item, reason: str) -> None:
        if self._closing:
            slot.drop_connections()
            self._fail(item, "the executor shut down before the attempt was sent", worker=slot.label)
            return
        item.bounces += 1
        spec = item.spec
        slot.drop_connections()
        slot.ready = False
        if slot.owned:
            how = _exit_description(slot.proc) if slot.proc is not None else "is not running"
            logger.warning(
                "HTTP worker %s %s (%s); restarting it, task %s attempt %d goes to the next free worker",
                slot.label,
                how,
                reason,
                spec.task_id,
                spec.attempt,
            )
        else:
            slot.down_reason = reason
            slot.down_until = time.monotonic()  # probe it at once, then back off
            logger.warning(
                "HTTP worker %s is not up (%s); task %s attempt %d goes to the next free worker",
                slot.label,
                reason,
                spec.task_id,
                spec.attempt,
            )
        if item.bounces > self._max_bounces:
            self._fail(
                item,
                f"could not be delivered to any HTTP worker after {item.bounces} tries "
                f"(last: {slot.label}: {reason})",
                worker=slot.label,
            )
        else:
            self._requeue(item)

    def _lost(self, slot: _Slot, item: _Item, exc: _Lost) -> None:
        spec = item.spec
        message = f"task {spec.task_id} attempt {spec.attempt} lost: HTTP worker {slot.label} {exc}"
        slot.drop_connections()
        if self._closing:
            self._fail(
                item,
                f"task {spec.task_id} attempt {spec.attempt} lost: the executor shut down while "
                f"HTTP worker {slot.label} ran it",
                worker=slot.label,
            )
            return
        if not slot.owned:
            slot.ready = False  # probe it before it gets another task
            slot.down_reason = str(exc)
            slot.down_until = time.monotonic()
            logger.warning("%s; the driver retries the task on the next free worker", message)
        elif not exc.kill and slot.proc is not None and slot.proc.poll() is not None:
            # It died under the attempt, and not by the task's doing: user code runs in the worker's
            # task processes, which report their own deaths. We repair it (restart it), so the loss
            # is ours to absorb: send the attempt again instead of charging the driver's max_lost.
            self._stop_process(slot, grace=0.0)
            if item.resends < _MAX_RESENDS:
                item.resends += 1
                attempt = item.spec.attempt % _RESEND_STRIDE + item.resends * _RESEND_STRIDE
                item.spec = replace(item.spec, attempt=attempt)
                logger.warning(
                    "%s; restarting the worker and sending the task again as attempt %d", message, attempt
                )
                self._requeue(item)
                return
            logger.warning("%s; restarting the worker, and the driver retries the task", message)
        elif exc.kill or slot.proc is None or slot.proc.poll() is not None:
            self._stop_process(slot, grace=0.0)  # not ready: the slot's thread restarts it next
            logger.warning("%s; restarting the worker, and the driver retries the task", message)
        else:
            # The process lives and answers; only the connection broke. It is reopened for the next task.
            logger.warning("%s; the driver retries the task", message)
        self._fail(item, message, worker=slot.label)

    def _replayed(self, slot: _Slot, item: _Item, reason: str) -> None:
        item.bounces += 1
        logger.warning(
            "HTTP worker %s refused task %s attempt %d as a replayed request (%s); sending it again",
            slot.label,
            item.spec.task_id,
            item.spec.attempt,
            reason,
        )
        if item.bounces > self._max_bounces:
            self._fail(
                item, f"HTTP worker {slot.label} refused it {item.bounces} times: {reason}", worker=slot.label
            )
        else:
            self._requeue(item)

    def _refused(self, slot: _Slot, item: _Item, reason: str) -> None:
        slot.drop_connections()
        slot.ready = False
        with self._lock:
            slot.removed = True
            left = [s for s in self._slots if not s.removed]
        logger.error(
            "HTTP worker %s: %s; it gets no more tasks (do the driver and the worker share one "
            "secret, and agree on the time?)",
            slot.label,
            reason,
        )
        if left:
            self._requeue(item)
            return
        error = AuthenticationError(
            f"every HTTP worker refused this driver's requests (last: {slot.label}: "
            f"{reason}): start the workers and the driver with the same secret "
            f"({SECRET_ENV} or --secret-file)"
        )
        self._fail(item, "", error=AuthenticationError(str(error)))
        self._abort(error)
