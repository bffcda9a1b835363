"""The reduce side of one task: merge one partition's runs from every map task, reduce, write.

Runs are read as ranged reads of the map tasks' committed partition objects (boundaries from their
commit manifests), merged by :mod:`mrkit.data.merging`, and each key's values reach the reducer as
an iterator, so memory stays bounded whatever the number of values of a key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from mrkit.data.map_side import UserCodeError, _short, user_failure
from mrkit.data.merging import group_in_memory, group_values, merge_sorted_runs
from mrkit.data.shuffle import Frame, read_frames, run_entries
from mrkit.model.job import Job, identity_reducer, returns_pairs
from mrkit.model.task import TaskFailure
from mrkit.storage.base import Storage


def open_runs(storage: Storage, parts: list[tuple[str, list[int]]]) -> list[Iterator[Frame]]:
    """Open every run of every ``(key, boundaries)`` object as a lazy iterator of its frames."""
    runs: list[Iterator[Frame]] = []
    for key, bounds in parts:
        for start, end in zip(bounds, bounds[1:], strict=False):
            runs.append(_frames(storage, key, start, end - start))
    return runs


def _frames(storage: Storage, key: str, start: int, length: int) -> Iterator[Frame]:
    # Opened lazily, on first use by the merge, so at most one buffer per run is live at a time.
    with storage.open_read(key, start, length) as f:
        yield from read_frames(f)


# Pickled run bytes -> peak bytes of the grouping dict built from them (tracemalloc): 2.5x for the
# word count benchmarks, 3.3x for adrevenue, and at worst 10-15x when every key is distinct and
# short (a 6-character str key pickles to ~10 bytes but costs a str, a value list and a dict slot:
# ~150 bytes). 16 keeps even that worst case within the budget.
IN_MEMORY_EXPANSION = 16


def fits_in_memory(run_bytes: int, memory_bytes: int) -> bool:
    """True when runs of ``run_bytes`` pickled bytes may be grouped in a dict within ``memory_bytes``."""
    return run_bytes * IN_MEMORY_EXPANSION <= memory_bytes


def reduce_partition(
    job: Job, runs: list[Iterator[Frame]], counters: dict[str, int], in_memory: bool = False
) -> Iterator[tuple[Any, Any]]:
    """Yield the reducer's output pairs for the merged ``runs``.

    Args:
        in_memory: group with :func:`group_in_memory` (faster, holds the whole partition) instead of
            the streaming k-way merge; the caller decides with :func:`fits_in_memory`. The output is
            the same either way.

    Raises:
        UserCodeError: the reducer raised; the failure names the key.
    """
    reducer = job.reducer or identity_reducer
    yields_pairs = job.reducer is None or returns_pairs(reducer)
    keys = 0
    key: Any = None
    if in_memory:
        groups = group_in_memory(runs)
    else:
        groups = group_values(merge_sorted_runs(map(run_entries, runs)))
    if getattr(job, "sort_values", False):  # jobs pickled before sort_values have no attribute
        groups = ((k, _sorted_values(k, vs)) for k, vs in groups)
    try:
        if yields_pairs:
            for key, values in groups:
                keys += 1
                yield from reducer(key, values)
        else:
            for key, values in groups:
                keys += 1
                yield key, reducer(key, values)
    except GeneratorExit:
        raise
    except UncomparableValues as exc:
        # Raised while grouping the next key, before the reducer saw it: the message names that key.
        error = user_failure("sorting values for the reducer", exc)
        raise UserCodeError(dataclasses.replace(error.failure, retryable=False)) from exc
    except Exception as exc:
        error = user_failure(f"reducer on key {_short(key)}", exc)
        tb = exc.__traceback__
        if isinstance(exc, TypeError) and tb is not None and tb.tb_next is None:
            # Raised by the call itself, not inside the reducer: it does not take (key, values)
            # (a signature inspect could not read at plan time). Every attempt fails the same way.
            error = UserCodeError(
                dataclasses.replace(
                    error.failure, message=f"reducer must take (key, values): {exc}", retryable=False
                )
            )
        raise error from exc
    finally:
        counters["keys"] = counters.get("keys", 0) + keys


class UncomparableValues(TypeError):
    """``sort_values=True`` and two values of one key cannot be compared (every attempt would fail)."""


def _sorted_values(key: Any, values: Iterator[Any]) -> Iterator[Any]:
    try:
        return iter(sorted(values))
    except TypeError as exc:
        raise UncomparableValues(
            f"sort_values=True, but the values of key {_short(key)} cannot be sorted: {exc}"
        ) from None


def write_partition(open_out: Callable[[], BinaryIO], pairs: Iterator[tuple[Any, Any]], fmt: str) -> int:
    """Write ``pairs`` to a new output object; returns the number of pairs written.

    Raises:
        UserCodeError: not retryable, when a pair cannot be written in ``fmt``
            (:class:`~mrkit.data.output.UnencodableOutput`): every attempt would fail the same way.
    """
    from mrkit.data.output import UnencodableOutput, write_pairs

    try:
        with open_out() as f:
            return write_pairs(f, pairs, fmt)
    except UnencodableOutput as exc:
        raise UserCodeError(
            TaskFailure(
                where=f"reducer output for key {_short(exc.key)}",
                exc_type="UnencodableOutput",
                message=f"cannot be written as {exc.fmt}: {exc.cause}",
                retryable=False,
            )
        ) from exc
