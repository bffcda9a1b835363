"""The values that cross process and machine boundaries: splits, task specs, task results.

All are frozen dataclasses with one ``encode() -> bytes`` / ``decode(bytes)`` pair each (STYLE 12).
The encoding is JSON, not pickle, so a spec or result can be read from any transport without
unpickling anything; the only pickled bytes inside are the futures API's function and arguments
(``TaskSpec.call``) and its results (``TaskResult.output``), which the transports authenticate
before use (docs/http.md, "Authentication"; docs/redis.md, "Security").

A spec carries references, never data (STYLE 13): a map task names its split (``uri``, byte range),
a reduce task its partition number, and both name the storage that holds the job's code and the
intermediate data. The job's code itself is stored once per job and cached by digest on workers.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from mrkit.security import redact_url


class TaskKind(str, enum.Enum):
    """What a task does."""

    MAP = "map"  # read one split, map, combine, partition; write sorted runs per reduce partition
    REDUCE = "reduce"  # merge one partition's runs from every map task, reduce, write a part file
    CALL = "call"  # futures API: apply a pickled function to a chunk of argument tuples


@dataclass(frozen=True)
class InputSplit:
    """One map task's share of the input.

    Attributes:
        uri: a local path, or ``storage-url#key`` for objects (e.g. records a driver stored).
        start, length: the byte range ``[start, start + length)``; ``length == -1`` means to the end
            (a compressed or non-seekable file is one split). A text split owns every line that
            *starts* in its range, so each line is read exactly once whatever the split size.
        format: ``text`` (one record per line), ``jsonl``, ``csv``, or ``pickle`` (a list of
            records stored by the driver for in-memory inputs).
        compression: ``""``, ``gz``, ``bz2``, ``xz`` or ``zst``.
        index: position of this split among the job's splits (for messages).
        options: reader options such as ``{"errors": "strict" | "replace" | "skip", "encoding": ...}``.
        mapper: which of the job's per-input mappers reads this split (``inputs={path: mapper}``,
            :meth:`mrkit.Job.with_input_mappers`); -1: the job's own mapper.
    """

    uri: str
    start: int = 0
    length: int = -1
    format: str = "text"
    compression: str = ""
    index: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    mapper: int = -1

    def describe(self) -> str:
        """Human description for messages: ``/data/a.txt bytes 0-1048576`` (a URL's password, as
        in records stored in a password-protected Redis, shows as ``***``)."""
        uri = redact_url(self.uri)
        if self.length < 0:
            return f"{uri}" if self.start == 0 else f"{uri} bytes {self.start}-end"
        return f"{uri} bytes {self.start}-{self.start + self.length}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSplit:
        return cls(**data)


@dataclass(frozen=True)
class TaskSettings:
    """Per-job knobs every task needs; small and JSON-able.

    Attributes:
        memory_mb: per-task memory budget: the map side spills a sorted run past it; the reduce side
            groups a partition in a dict when its runs fit in it, else streams a k-way merge.
        output_format: ``tsv`` (JSON key TAB JSON value), ``jsonl`` or ``pickle`` (in-memory results).
        task_timeout: seconds an attempt may go *without progress* (no new record or key) before
            the host of the attempt ends it and reports a ``TaskTimeout`` failure naming the record
            (:mod:`mrkit.execution.watchdog`); None: never. It counts against ``max_attempts``.
    """

    memory_mb: float = 256.0
    output_format: str = "tsv"
    task_timeout: float | None = None

    @property
    def memory_bytes(self) -> int:
        """``memory_mb`` in bytes."""
        return int(self.memory_mb * (1 << 20))


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker needs to run one attempt of one task, by reference.

    Attributes:
        job_id: the job's id (also the prefix of its storage keys).
        task_id: ``map-00003``, ``reduce-00001`` or ``call-000042``; stable across attempts.
        kind: :class:`TaskKind`.
        attempt: 1-based attempt number; each attempt writes under its own keys.
        storage_url: URL of the storage that holds the job's code and intermediate data.
        job_key, job_digest: where the pickled job lies in that storage and its SHA-256, checked
            before unpickling and used as the cache key on workers.
        n_map, n_reduce: the job's task counts.
        split: the input of a map task (its first piece, when it has several).
        more_splits: a map task's further pieces, read after ``split`` in order: small files that the
            default plan packs into one task (:func:`mrkit.data.splits.pack_splits`).
        partition: the partition of a reduce task.
        output_url: storage URL of the output folder (reduce tasks write their part there).
        settings: :class:`TaskSettings`.
        call_fn: futures API: the cloudpickled function (the same bytes for every chunk of a call).
        call_digest: SHA-256 of ``call_fn``, so workers unpickle each function once.
        call: futures API: the pickled list of argument tuples of this chunk.
    """

    job_id: str
    task_id: str
    kind: TaskKind
    attempt: int = 1
    storage_url: str = ""
    job_key: str = ""
    job_digest: str = ""
    n_map: int = 0
    n_reduce: int = 0
    split: InputSplit | None = None
    more_splits: tuple[InputSplit, ...] = ()
    partition: int = -1
    output_url: str = ""
    settings: TaskSettings = field(default_factory=TaskSettings)
    call_fn: bytes = b""
    call_digest: str = ""
    call: bytes = b""

    def encode(self) -> bytes:
        """Serialise to JSON bytes (no pickle at this level).

        Fields equal to their defaults are left out (:meth:`decode` restores them): a futures
        task's spec is then half as long, and encoding plus decoding it ~4 µs cheaper, which is
        per-task overhead on every remote executor.

        >>> TaskSpec("j", "call-000001", TaskKind.CALL, call=b"x").encode()
        b'{"job_id":"j","task_id":"call-000001","kind":"call","call":"eA=="}'
        """
        # A shallow dict, not dataclasses.asdict(): asdict deep-copies every value, which made
        # encoding ~3x slower and dominated the per-task cost of remote executors (same output).
        data = {k: v for k, v in self.__dict__.items() if _SPEC_DEFAULTS.get(k, _NO_DEFAULT) != v}
        data["kind"] = self.kind.value
        if self.split is not None:
            data["split"] = dict(self.split.__dict__)
        if self.more_splits:
            data["more_splits"] = [dict(piece.__dict__) for piece in self.more_splits]
        if self.settings == _DEFAULT_SETTINGS:
            del data["settings"]
        else:
            data["settings"] = dict(self.settings.__dict__)
        for name in ("call", "call_fn"):
            if name in data:
                data[name] = base64.b64encode(data[name]).decode("ascii")
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> TaskSpec:
        """Inverse of :meth:`encode`."""
        data = json.loads(raw)
        data["kind"] = TaskKind(data["kind"])
        for name in ("call", "call_fn"):
            data[name] = base64.b64decode(data[name]) if data.get(name) else b""
        if data.get("split") is not None:
            data["split"] = InputSplit.from_dict(data["split"])
        if data.get("more_splits"):
            data["more_splits"] = tuple(InputSplit.from_dict(piece) for piece in data["more_splits"])
        data["settings"] = TaskSettings(**data.get("settings") or {})
        return cls(**data)

    @property
    def pieces(self) -> tuple[InputSplit, ...]:
        """Every split a map task reads, in order (``split`` then ``more_splits``); empty otherwise."""
        return () if self.split is None else (self.split, *self.more_splits)

    def describe_input(self) -> str:
        """A map task's input for messages: its split, or its first piece and how many follow."""
        if self.split is None:
            return ""
        if not self.more_splits:
            return self.split.describe()
        n = len(self.more_splits)
        return f"{self.split.describe()} and {n} more input{'s' if n > 1 else ''} packed into this task"

    def next_attempt(self) -> TaskSpec:
        return dataclasses.replace(self, attempt=self.attempt + 1)


# What TaskSpec.encode leaves out: the fields whose value equals their default.
_SPEC_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(TaskSpec) if f.default is not dataclasses.MISSING
}
_DEFAULT_SETTINGS = TaskSettings()
_NO_DEFAULT = object()


@dataclass(frozen=True)
class TaskFailure:
    """Why an attempt's user code failed, in a form that crosses any transport.

    Attributes:
        where: the input position: ``/data/a.txt bytes 0-1048576, record 17 (byte 1234)`` for map
            tasks, ``key 'apple'`` for reduce tasks.
        exc_type, message: the exception's class name and ``str()``.
        traceback: the formatted remote traceback.
        retryable: False when another attempt cannot succeed (undecodable input, a missing file),
            so the coordinator fails the job at once instead of burning the remaining attempts.
    """

    where: str
    exc_type: str
    message: str
    traceback: str = ""
    retryable: bool = True

    def sentence(self) -> str:
        return (
            f"{self.where}: {self.exc_type}: {self.message}"
            if self.where
            else f"{self.exc_type}: {self.message}"
        )


@dataclass(frozen=True)
class TaskResult:
    """What one attempt reports back.

    Attributes:
        task_id, attempt: which attempt this is.
        ok: False when user code raised (``failure`` says why).
        committed: True when this attempt's output was published first (first attempt wins);
            False for a later duplicate whose output was discarded.
        counters: records/bytes/spills and user counters of this attempt.
        output: futures API results (pickled list), empty for map/reduce.
        worker: a label of the process or machine that ran it.
        seconds: wall time of the attempt.
        failure: set when ``ok`` is False.
        lost_deliveries: earlier runs of this same attempt that the executor's infrastructure
            started and lost on its own (a Dask scheduler re-running a task whose worker died); the
            driver counts them as lost attempts, so counters tell the truth on every backend.
    """

    task_id: str
    attempt: int
    ok: bool = True
    committed: bool = False
    counters: dict[str, int] = field(default_factory=dict)
    output: bytes = b""
    worker: str = ""
    seconds: float = 0.0
    failure: TaskFailure | None = None
    lost_deliveries: int = 0

    def encode(self) -> bytes:
        data = dict(self.__dict__)  # shallow, not dataclasses.asdict(): see TaskSpec.encode
        if self.failure is not None:
            data["failure"] = dict(self.failure.__dict__)
        data["output"] = base64.b64encode(self.output).decode("ascii") if self.output else ""
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> TaskResult:
        data = json.loads(raw)
        data["output"] = base64.b64decode(data["output"]) if data.get("output") else b""
        if data.get("failure") is not None:
            data["failure"] = TaskFailure(**data["failure"])
        return cls(**data)


def failure_message_parts(
    phase: str, spec: TaskSpec, failure: TaskFailure, where: str | None = None
) -> tuple[str, str]:
    """A failed job's sentence, split around its attempt count (``... after `` | `` ...``):
    ``prefix + f"{n} attempt{'s' * (n != 1)}" + suffix``. One definition, so that a job fails with
    the same sentence whichever driver ran it (in process, a Redis fleet, serverless).

    Args:
        where: where the failure happened, when the caller names it (the in-process driver names a
            reduce task's partition); default: the failure's own ``where``, else the task's input.
    """
    retry_note = "" if failure.retryable else " (not retried: another attempt would fail the same way)"
    if where is None:
        where = spec.describe_input() if not failure.where else ""
    detail = failure.sentence() if not where else f"{where}: {failure.sentence()}"
    return f"{phase} task {spec.task_id} of job {spec.job_id} failed after ", f"{retry_note}: {detail}"


def failure_message(
    phase: str, spec: TaskSpec, failure: TaskFailure, failed: int, where: str | None = None
) -> str:
    """The one-sentence message of a task that failed ``failed`` times (:func:`failure_message_parts`)."""
    prefix, suffix = failure_message_parts(phase, spec, failure, where)
    return f"{prefix}{failed} attempt{'s' * (failed != 1)}{suffix}"
