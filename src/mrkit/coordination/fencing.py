"""Fencing: each driver incarnation of a job holds an epoch; an older one (a zombie) is refused.

A driver that starts a job, or resumes it (:mod:`mrkit.coordination.resume`), *claims* the next
epoch of the job: it creates ``{job}/epoch/{n:08d}`` in the job's intermediate storage with
``put_if_absent`` (an ``O_EXCL``-style link on local folders, ``SET NX`` on Redis, a conditional
put on object stores), holding a random token of its own. Exactly one driver wins each number, so
epochs are dense and increasing. Before it launches tasks (checked at most every
:data:`CHECK_INTERVAL` seconds, and always right after waking from a pause) and right before it
publishes the output, a driver checks that its epoch is still the newest: its own key still holds
its token and ``epoch n+1`` does not exist. Otherwise it raises :class:`JobFenced` ("fenced by a
newer driver of job ID (epoch N > M)") and stops without publishing, deleting or discarding
anything: the state and the output belong to the newer driver.

A newer driver that finished has removed the job's state, epochs included; it recorded its epoch
in the output's ``_SUCCESS``, which is where a zombie reads N in that case.

The check and the act that follows it are two steps, so a driver paused between them can still
act once: fencing bounds what a zombie does to at most the one step it was in when it was paused.
"""

from __future__ import annotations

import json
import time
import uuid

from mrkit.errors import JobFailed
from mrkit.model import layout
from mrkit.storage.base import Storage
from mrkit.storage.redis import redact as redact_url

CHECK_INTERVAL = 0.25  # seconds between two epoch checks while a phase runs (one or two reads each)


class JobFenced(JobFailed):
    """Raised in a driver whose job was taken over by a newer driver (a resumed run)."""


class JobStateLost(JobFailed):
    """Raised in a driver whose job state vanished with no newer driver to own it (storage lost data)."""


def epoch_prefix(job_id: str) -> str:
    """``{job}/epoch/``: where the epochs of ``job_id`` lie in its intermediate storage."""
    return f"{job_id}/epoch/"


def epoch_key(job_id: str, number: int) -> str:
    """``{job}/epoch/00000003``."""
    return f"{epoch_prefix(job_id)}{number:08d}"


def newest_epoch(storage: Storage, job_id: str) -> int:
    """The highest epoch claimed for ``job_id`` in ``storage`` (0: none)."""
    newest = 0
    prefix = epoch_prefix(job_id)
    for key in storage.list(prefix):
        tail = key[len(prefix) :]
        if tail.isdigit():
            newest = max(newest, int(tail))
    return newest


class Epoch:
    """The epoch this driver holds for one job.

    Use :meth:`claim` to take one; call :meth:`check` before any write that matters.

    Attributes:
        job_id: the job.
        number: this driver's epoch (1 for the first driver of the job).
    """

    def __init__(
        self, storage: Storage, job_id: str, number: int, token: str, output: Storage | None
    ) -> None:
        self.storage = storage
        self.job_id = job_id
        self.number = number
        self.token = token
        self.output = output
        self._checked = time.monotonic()

    @classmethod
    def claim(cls, storage: Storage, job_id: str, output: Storage | None = None) -> Epoch:
        """Take the next epoch of ``job_id``: an atomic create of ``epoch n+1``, retried if raced.

        Args:
            storage: the job's intermediate storage.
            job_id: the job.
            output: the output folder (read by :meth:`check` when a newer driver already finished).

        Returns:
            The claimed :class:`Epoch`.
        """
        token = uuid.uuid4().hex
        number = newest_epoch(storage, job_id) + 1
        while not storage.put_if_absent(epoch_key(job_id, number), token.encode()):
            number += 1  # another driver took this number first: the next one is ours to try
        return cls(storage, job_id, number, token, output)

    def check(self, *, force: bool = True) -> None:
        """Raise :class:`JobFenced` unless this driver still holds the newest epoch of its job.

        Args:
            force: check now; False skips the check when the last one is under
                :data:`CHECK_INTERVAL` seconds old (a driver woken from a pause checks at once,
                since the monotonic clock keeps running while a process is stopped).

        Raises:
            JobFenced: a newer driver claimed a later epoch, or finished and removed this job's state.
            JobStateLost: this job's epochs are gone and nothing newer exists: the storage lost them.
        """
        now = time.monotonic()
        if not force and now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        mine = self.storage.get_or_none(epoch_key(self.job_id, self.number))
        if mine == self.token.encode() and not self.storage.exists(epoch_key(self.job_id, self.number + 1)):
            return
        newer = max(newest_epoch(self.storage, self.job_id), self._published_epoch())
        if mine is None and newer == 0:
            # No epoch at all and nothing published: no newer driver exists, the state is gone.
            raise JobStateLost(
                f"the intermediate storage {redact_url(self.storage.url)} lost the state of job "
                f"{self.job_id} (it restarted without persistence, or the keys were deleted): the "
                "work done so far is lost; this driver stops without touching the output",
                job_id=self.job_id,
            )
        shown = f"epoch {newer} > {self.number}" if newer > self.number else f"epoch ? > {self.number}"
        raise JobFenced(
            f"fenced by a newer driver of job {self.job_id} ({shown}): this driver stops without "
            "touching the output",
            job_id=self.job_id,
        )

    def _published_epoch(self) -> int:
        """The epoch recorded in the output's ``_SUCCESS`` by a driver of this job that finished."""
        if self.output is None:
            return 0
        raw = self.output.get_or_none(layout.SUCCESS_KEY)
        try:
            info = json.loads(raw) if raw else {}
        except ValueError:
            return 0
        if not isinstance(info, dict) or info.get("job_id") != self.job_id:
            return 0
        epoch = info.get("epoch", 0)
        return epoch if isinstance(epoch, int) else 0
