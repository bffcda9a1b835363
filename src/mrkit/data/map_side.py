"""The map side of one task: map, combine, partition, sort, spill.

Pairs from the user's mapper go into two dicts (in-mapper combining): ``buf`` holds every key's
first value and ``more`` the later values of the keys that have more than one. Most keys of most
jobs have one value at spill time (all of them after a combiner), and a fresh list per key cost
more than the rest of the buffering: 130,000 distinct keys spilled in 217 ms with a list each, in
120 ms without. A hook that returns a dict's items into an empty buffer (``Counter(...).items()``
from ``mapper_split`` or ``mapper_final``) becomes ``buf`` as it is, with no Python work per pair.
Every few thousand records the buffer's size is estimated; past the memory
budget it is combined in place (when the job has a combiner) and, if still too big, *spilled*:
partitioned by the stable partitioner, sorted by encoded key, and appended as one sorted run of
columnar frames (:mod:`mrkit.data.shuffle`) to each partition's object. At the end the rest is flushed
the same way. The result is, per reduce partition, one object holding one run per spill;
:class:`MapOutput` returns their byte boundaries for the commit manifest.

The hot loop (:func:`map_split`) is flat: lookups are bound before it, the user function is called
directly per record, and framework work happens per slice of records, never per record (STYLE 23).

About 480 lines: mapping, combining, partitioning and spilling share the map output buffer and
its memory accounting.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import traceback
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from operator import itemgetter
from typing import Any, BinaryIO

from mrkit.data.shuffle import FRAME_ENTRIES, FRAME_VALUES, write_run
from mrkit.model.job import Job, returns_pairs
from mrkit.model.partition import checked_partitioner, key_bytes, stable_partition
from mrkit.model.task import TaskFailure

SLICE = 4096  # records between two memory checks
# With a combiner, the buffer is combined as soon as it passes this many (estimated) bytes, or twice
# its size after the last combine, whichever is more (and never past the budget): a job with a
# combiner then holds about its distinct keys, not its whole budget, so memory stays flat as the
# input grows, and the doubling keeps the combining cost linear in the records.
COMBINE_FLOOR_BYTES = 16 << 20
_LIST_COST = 96  # bytes of the list that ``more`` holds for a key with several values
_kb_first = itemgetter(0)
_key_second = itemgetter(1)
_STR_CRC = zlib.crc32(b"s")  # CRC-32 state after the str tag of key_bytes


class UserCodeError(Exception):
    """A user function raised; carries the :class:`TaskFailure` that names where and why."""

    def __init__(self, failure: TaskFailure) -> None:
        self.failure = failure
        super().__init__(failure.sentence())


def user_failure(where: str, exc: BaseException) -> UserCodeError:
    """Wrap the exception being handled as a :class:`UserCodeError` naming ``where``."""
    return UserCodeError(
        TaskFailure(
            where=where,
            exc_type=type(exc).__name__,
            message=str(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
    )


class MapOutput:
    """One map attempt's buffered output, spilled to sorted runs per reduce partition.

    Args:
        n_reduce: number of reduce partitions.
        partitioner: the job's ``partitioner(key, n_reduce)`` or None for the stable default.
        combiner: the job's combiner or None.
        memory_bytes: the buffer budget; past it the buffer is combined, then spilled.
        open_part: opens the (single) output object of one partition for writing.
        frame_entries, frame_values: the runs' frame limits (:func:`~mrkit.data.shuffle.write_run`).
    """

    def __init__(
        self,
        *,
        n_reduce: int,
        partitioner: Callable[[Any, int], int] | None,
        combiner: Callable[..., Any] | None,
        memory_bytes: int,
        open_part: Callable[[int], BinaryIO],
        frame_entries: int = FRAME_ENTRIES,
        frame_values: int = FRAME_VALUES,
    ) -> None:
        self.buf: dict[Any, Any] = {}  # key -> its first value
        self.more: dict[Any, list[Any]] = {}  # key -> its later values (keys with more than one)
        self.n_reduce = n_reduce
        self._partition = None if partitioner is None else checked_partitioner(partitioner)
        self._combiner = combiner
        self._combiner_pairs = combiner is not None and returns_pairs(combiner)
        self.memory_bytes = memory_bytes
        self._open_part = open_part
        self._frame_limits = {"frame_entries": frame_entries, "frame_values": frame_values}
        self._writers: dict[int, BinaryIO] = {}
        self.offsets: dict[int, list[int]] = {}  # partition -> run boundaries [0, end of run 1, ...]
        self.spills = 0
        self.combines = 0
        self.pairs_out = 0
        self._entry_cost = 0.0
        self._value_cost = 0.0
        self._next_check = self._reset_threshold()
        self._unmeasured = 0  # records added since the buffer was last measured (check_memory)
        self._measure_every = SLICE
        self._measured = 0  # the buffer's estimated bytes at that measurement

    # -- memory ------------------------------------------------------------------------------

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        """Add ``pairs`` to the buffer, without checking memory (the caller does, between slices)."""
        _add_into(self.buf, self.more, pairs)

    def values_of(self, key: Any) -> list[Any]:
        """Every value the buffer holds for ``key``, in the order they came (empty if none)."""
        if key not in self.buf:
            return []
        return [self.buf[key], *self.more.get(key, ())]

    def estimated_bytes(self) -> int:
        """A cheap estimate of the buffer's memory: per-key and per-value costs, sampled once."""
        buf, more = self.buf, self.more
        if not buf:
            return 0
        if not self._entry_cost:
            self._sample_costs()
        n_values = len(buf) + sum(map(len, more.values()))
        return int(len(buf) * self._entry_cost + len(more) * _LIST_COST + n_values * self._value_cost)

    def _sample_costs(self) -> None:
        sample = list(islice(self.buf.items(), 32))
        key_size = sum(sys.getsizeof(k) for k, _ in sample) / len(sample)
        # Small ints are shared singletons: a slot (8 bytes) is all they cost.
        value_bytes = sum(0 if type(v) is int and -5 <= v <= 256 else sys.getsizeof(v) for _, v in sample)
        value_size = value_bytes / len(sample)
        self._entry_cost = key_size + 64  # a dict slot, its index and the table's spare room
        self._value_cost = value_size + 8

    def _reset_threshold(self) -> int:
        return (
            min(self.memory_bytes, COMBINE_FLOOR_BYTES) if self._combiner is not None else self.memory_bytes
        )

    def check_memory(self, added: int = 0) -> None:
        """Combine, then spill, when the buffer passes its threshold; called between slices.

        Without a combiner the threshold is the budget (``memory_bytes``). With one, it starts at
        ``COMBINE_FLOOR_BYTES`` and follows the buffer's size after each combine (see there).

        Args:
            added: records (or pairs) added since the last call; 0 measures now. Measuring counts
                every key's values, ~20 ns per key: done every SLICE records, 300k distinct keys
                made the checks half of a mapping loop (334 of 685 ms). So a buffer of many keys is
                measured again only after the records that, at the growth measured since the
                previous measurement, fill half the room left below the threshold (at least SLICE,
                at most one per two keys): the checks cost O(records), and a steady growth never
                passes the threshold between two of them.
        """
        if added:
            self._unmeasured += added
            if self._unmeasured < self._measure_every:
                return
        since, self._unmeasured = self._unmeasured, 0
        size = self.estimated_bytes()
        if size <= self._next_check:
            self._schedule_measure(size, since)
            return
        if self._combiner is not None:
            self.combine()
            after = self.estimated_bytes()
            if after <= self.memory_bytes // 2:
                self._next_check = min(self.memory_bytes, max(COMBINE_FLOOR_BYTES, 2 * after))
                self._measured, self._measure_every = after, SLICE
                return
        self.spill()
        self._next_check = self._reset_threshold()
        self._measured, self._measure_every = 0, SLICE

    def _schedule_measure(self, size: int, since: int) -> None:
        """Set how many records may pass before the next measurement (see check_memory)."""
        keys = len(self.buf)
        every = SLICE
        if keys > 8 * SLICE and since > 0:
            per_record = max(1.0, (size - self._measured) / since)  # bytes a record added, lately
            every = max(SLICE, min(keys // 2, int((self._next_check - size) / 2 / per_record)))
        self._measured, self._measure_every = size, every

    # -- combine, partition, sort, write -----------------------------------------------------

    def combine(self) -> None:
        """Apply the combiner to every key holding more than one value, in place."""
        combiner, buf, more = self._combiner, self.buf, self.more
        if combiner is None:
            return
        self.combines += 1
        key = None
        try:
            if not self._combiner_pairs:
                # Only the keys of ``more`` have several values: the others are not even visited.
                for key, rest in more.items():
                    rest.insert(0, buf[key])  # a memmove: 1.5x cheaper than chaining the two
                    buf[key] = combiner(key, iter(rest))
                more.clear()
                return
            if not more:
                return
            new_buf: dict[Any, Any] = {}
            new_more: dict[Any, list[Any]] = {}
            for key, first in buf.items():
                later = more.get(key)
                if later is None:
                    _add_into(new_buf, new_more, ((key, first),))
                else:
                    later.insert(0, first)
                    _add_into(new_buf, new_more, combiner(key, iter(later)))
            # Refilled in place: map_split holds the two dicts under local names.
            buf.clear()
            buf.update(new_buf)
            more.clear()
            more.update(new_more)
        except Exception as exc:
            raise user_failure(f"combiner on key {_short(key)}", exc) from exc

    def spill(self) -> None:
        """Write the buffer as one sorted run per non-empty partition, then empty it."""
        source, more = self.buf, self.more
        if not source:
            return
        n = self.n_reduce
        try:
            parts, str_keys = _partition_keys(source, n, self._partition)
        except _KeyFailure as failure:
            cause = failure.__cause__
            assert isinstance(cause, Exception)
            raise user_failure(f"partitioner on key {_short(failure.key)}", cause) from cause
        for p, keys in enumerate(parts):
            if not keys:
                continue
            kbs: list[bytes] | None = None
            if str_keys:
                keys.sort()  # a str sorts as its UTF-8 bytes do (module docstring of runs)
            else:
                keys.sort(key=_kb_first)
                kbs = list(map(_kb_first, keys))
                keys = list(map(_key_second, keys))
            values = list(map(source.__getitem__, keys))
            frame_single = True
            if more and not more.keys().isdisjoint(keys):  # some key of this partition has more
                get = more.get
                values = [
                    [v] if (later := get(k)) is None else [v, *later]
                    for k, v in zip(keys, values, strict=True)
                ]
                frame_single = False
            writer = self._writers.get(p)
            if writer is None:
                writer = self._writers[p] = self._open_part(p)
                self.offsets[p] = [0]
            written, n_values = write_run(
                writer, keys, values, kbs=kbs, single=frame_single, **self._frame_limits
            )
            self.offsets[p].append(self.offsets[p][-1] + written)
            self.pairs_out += n_values
        source.clear()
        more.clear()
        self.spills += 1

    def finish(self) -> dict[int, list[int]]:
        """Combine and flush what is left, close every partition object, return run boundaries."""
        if self._combiner is not None and self.more:
            self.combine()
        self.spill()
        for writer in self._writers.values():
            writer.close()
        return self.offsets

    def abort(self) -> None:
        """Discard partially written partition objects (the attempt failed)."""
        for writer in self._writers.values():
            writer.__exit__(RuntimeError, RuntimeError("aborted"), None)


class _KeyFailure(Exception):
    """Partitioning or encoding ``key`` raised (the cause); spill names the key in its message."""

    def __init__(self, key: Any) -> None:
        super().__init__(key)
        self.key = key


def _partition_keys(
    source: dict[Any, Any], n: int, partition: Callable[[Any, int], int] | None
) -> tuple[list[list[Any]], bool]:
    """Split the keys of ``source`` into ``n`` partitions; also say whether every key is a str.

    The items of each partition are the keys themselves when every key is a str, else
    ``(key_bytes(key), key)`` pairs, so that the sort that follows encodes each key once.
    The default partitioner is :func:`~mrkit.model.partition.stable_partition`, computed here in
    one loop (CRC-32 of ``b"s" + utf8`` continued from the CRC of ``b"s"``: the same number).
    """
    str_keys = set(map(type, source)) == {str}
    parts: list[list[Any]] = [[] for _ in range(n)]
    key = None
    try:
        if partition is not None and partition is not stable_partition:
            if str_keys:
                for key in source:
                    parts[partition(key, n)].append(key)
            else:
                for key in source:
                    parts[partition(key, n)].append((key_bytes(key), key))
        elif not str_keys:
            crc = zlib.crc32
            for key in source:
                kb = key_bytes(key)
                parts[crc(kb) % n].append((kb, key))
        elif n == 1:
            parts[0] = list(source)
        else:
            crc, seed = zlib.crc32, _STR_CRC
            try:
                for key in source:
                    parts[crc(key.encode(), seed) % n].append(key)
            except UnicodeEncodeError:  # a lone surrogate: encode as key_bytes does
                parts = [[] for _ in range(n)]
                for key in source:
                    parts[crc(key.encode("utf-8", "surrogatepass"), seed) % n].append(key)
    except Exception as exc:
        raise _KeyFailure(key) from exc
    return parts, str_keys


def map_split(job: Job, batches: Iterable[Any], out: MapOutput, where: Callable[[], str]) -> int:
    """Run the job's map hooks over one split's record batches into ``out``; returns records read.

    Args:
        job: the job (its ``mapper`` / ``mapper_init`` / ``mapper_final`` / ``mapper_split``).
        batches: the reader's batches (``.records`` list and ``.locate(i)``).
        out: the attempt's :class:`MapOutput`.
        where: describes the split for messages about hooks that have no single record.

    Raises:
        UserCodeError: a user function raised; the failure names the record or hook.
    """
    if job.mapper_split is not None:
        return _map_whole_split(job, batches, out, where)
    mapper = job.mapper
    assert mapper is not None  # plan_job refuses a job with no mapper for some input
    check = out.check_memory
    n_records = 0
    if job.mapper_init is not None:
        _run_hook(job.mapper_init, out, f"mapper_init of {where()}")
    # Bound after mapper_init: its dict items may have become the buffer. Spills and combines
    # empty and refill these two dicts in place, so the names stay good for the whole loop.
    buf, more = out.buf, out.more
    more_get = more.get
    for batch in batches:
        records = batch.records
        for lo in range(0, len(records), SLICE):
            chunk = records[lo : lo + SLICE] if len(records) > SLICE else records
            record = None
            try:
                for record in chunk:
                    pairs = mapper(record)
                    if pairs is not None:
                        # _add_into, inlined: the hottest loop, where a call per record would
                        # cost more than the lookups (``more`` first: see there).
                        for key, value in pairs:
                            lst = more_get(key)
                            if lst is not None:
                                lst.append(value)
                            elif key in buf:
                                more[key] = [value]
                            else:
                                buf[key] = value
            except UserCodeError:
                raise
            except Exception as exc:
                index = lo + _index_of(chunk, record)
                error = user_failure(f"mapper on {batch.locate(index)}", exc)
                tb = exc.__traceback__
                if isinstance(exc, (TypeError, ValueError)) and tb is not None and tb.tb_next is None:
                    # Raised by this loop itself, not inside user code: the mapper's output is not
                    # (key, value) pairs, or the mapper does not take one record. Every attempt
                    # would fail the same way: do not retry.
                    error = UserCodeError(
                        dataclasses.replace(
                            error.failure,
                            message=f"mapper must take one record and yield (key, value) pairs: {exc}",
                            retryable=False,
                        )
                    )
                raise error from exc
            n_records += len(chunk)
            check(len(chunk))
    if job.mapper_final is not None:
        _run_hook(job.mapper_final, out, f"mapper_final of {where()}")
    return n_records


def _map_whole_split(job: Job, batches: Iterable[Any], out: MapOutput, where: Callable[[], str]) -> int:
    counted = [0]

    def batch_records(batch: Any) -> list[Any]:
        counted[0] += len(batch.records)
        return batch.records  # type: ignore[no-any-return]

    def records() -> Iterator[Any]:
        # chain hands out the records in C; Python runs once per batch, not once per record.
        return chain.from_iterable(map(batch_records, batches))

    assert job.mapper_split is not None
    try:
        pairs = job.mapper_split(records())
        if pairs is not None:
            _add_pairs(pairs, out)
    except UserCodeError:
        raise
    except Exception as exc:
        raise user_failure(f"mapper_split on {where()}", exc) from exc
    return counted[0]


def _run_hook(hook: Callable[[], Any], out: MapOutput, where: str) -> None:
    try:
        pairs = hook()
        if pairs is not None:
            _add_pairs(pairs, out)
    except UserCodeError:
        raise
    except Exception as exc:
        raise user_failure(where, exc) from exc


_DICT_ITEMS: type = type({}.items())


def _add_into(buf: dict[Any, Any], more: dict[Any, list[Any]], pairs: Iterable[tuple[Any, Any]]) -> None:
    """Add ``pairs`` to a buffer's two dicts (``buf``: each key's first value; ``more``: the later
    values of keys with several). ``more`` is looked in first: a key seen many times (a word)
    costs one lookup and an append. map_split runs the same loop inlined, per record."""
    more_get = more.get
    for key, value in pairs:
        lst = more_get(key)
        if lst is not None:
            lst.append(value)
        elif key in buf:
            more[key] = [value]
        else:
            buf[key] = value


def _add_pairs(pairs: Iterable[tuple[Any, Any]], out: MapOutput) -> None:
    """Add a hook's pairs to the buffer, checking memory every few thousand pairs.

    A dict's items (``Counter(words).items()``, a common ``mapper_split``/``mapper_final`` result)
    arriving at an empty buffer become the buffer as they are: no Python work per pair here.
    """
    if type(pairs) is _DICT_ITEMS and not out.buf:
        owned = _sole_owner(pairs)  # type: ignore[arg-type]
        # A copy, unless nothing but this items view holds the dict (``Counter(...).items()``):
        # then nobody can read or change it afterwards, and the copy (8.6 ms per 77k words) is saved.
        out.buf = owned if owned is not None else dict(pairs)  # type: ignore[arg-type]
        out.check_memory()
        return
    it = iter(pairs)
    while True:
        chunk = list(islice(it, SLICE * 4))
        if not chunk:
            return
        out.add(chunk)
        out.check_memory(len(chunk))


def _sole_owner(items: Any) -> dict[Any, Any] | None:
    """The dict (or ``Counter``) behind the items view ``items`` when only the view refers to it
    (no name, attribute or weak reference): the mapper built it and let it go. Else None.

    CPython only (reference counts); elsewhere always None, and the caller copies.
    """
    getrefcount = getattr(sys, "getrefcount", None)
    if getrefcount is None or sys.implementation.name != "cpython":
        return None
    referents = gc.get_referents(items.mapping)
    if len(referents) != 1:
        return None
    owner = referents[0]
    del referents
    if type(owner) not in (dict, Counter) or weakref.getweakrefcount(owner):
        return None
    # References: the view, ``owner`` here and getrefcount's argument.
    return owner if getrefcount(owner) <= 3 else None  # type: ignore[no-any-return]


def _index_of(chunk: list[Any], record: Any) -> int:
    """Position of the failing record (by identity, falling back to equality)."""
    for i, r in enumerate(chunk):
        if r is record:
            return i
    try:
        return chunk.index(record)
    except ValueError:
        return 0


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
