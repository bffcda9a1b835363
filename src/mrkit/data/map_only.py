"""Map-only tasks (``n_reduce=0``): a map task's pairs are its output part, as the mapper emits them.

No combiner, partitioner or shuffle: :func:`map_only_pairs` runs the job's map hooks over one split
(``mapper_init``, ``mapper`` per record or ``mapper_split`` once, ``mapper_final``) and yields their
pairs in order, for the runtime to write to the task's part file (the reduce side's writer and
format). A user function that raises fails the task naming the record or hook, as in
:func:`~mrkit.data.map_side.map_split`; output that is not ``(key, value)`` pairs is not retried.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mrkit.data.map_side import UserCodeError, user_failure
from mrkit.model.job import Job


def map_only_pairs(
    job: Job, batches: Iterable[Any], where: Callable[[], str], counts: dict[str, int]
) -> Iterator[tuple[Any, Any]]:
    """Yield the pairs of ``job``'s map hooks over ``batches``; ``counts["records_in"]`` and
    ``counts["pairs_out"]`` say how many records were read and pairs made.

    Raises:
        UserCodeError: a user function raised, or emitted something that is not a pair.
    """
    counts.setdefault("records_in", 0)
    counts.setdefault("pairs_out", 0)
    if job.mapper_init is not None:
        yield from _hook(job.mapper_init, f"mapper_init of {where()}", counts)
    if job.mapper_split is not None:

        def records() -> Iterator[Any]:
            for batch in batches:
                counts["records_in"] += len(batch.records)
                yield from batch.records

        yield from _hook(lambda: job.mapper_split(records()), f"mapper_split on {where()}", counts)  # type: ignore[misc]
    else:
        mapper = job.mapper
        assert mapper is not None  # plan_job refuses a job with no mapper for some input
        for batch in batches:
            for i, record in enumerate(batch.records):
                try:
                    for key, value in mapper(record) or ():
                        counts["pairs_out"] += 1
                        yield key, value
                except UserCodeError:
                    raise
                except Exception as exc:
                    raise _failure(f"mapper on {batch.locate(i)}", exc) from exc
            counts["records_in"] += len(batch.records)
    if job.mapper_final is not None:
        yield from _hook(job.mapper_final, f"mapper_final of {where()}", counts)


def _hook(call: Callable[[], Any], where: str, counts: dict[str, int]) -> Iterator[tuple[Any, Any]]:
    try:
        for key, value in call() or ():
            counts["pairs_out"] += 1
            yield key, value
    except UserCodeError:
        raise
    except Exception as exc:
        raise _failure(where, exc) from exc


def _failure(where: str, exc: Exception) -> UserCodeError:
    error = user_failure(where, exc)
    tb = exc.__traceback__
    if isinstance(exc, (TypeError, ValueError)) and tb is not None and tb.tb_next is None:
        # Raised by the unpacking loop here, not inside user code: not (key, value) pairs, or a
        # mapper that does not take one record. Every attempt would fail the same way.
        return UserCodeError(
            dataclasses.replace(
                error.failure,
                message=f"mapper must take one record and yield (key, value) pairs: {exc}",
                retryable=False,
            )
        )
    return error
