"""What a finished job gives back: :class:`Result` (``mrkit.run``, and ``JobHandle.wait()`` on every
backend)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mrkit.coordination.progress import summary_line
from mrkit.data.output import read_output


class Result:
    """What ``mrkit.run`` returns: the output's pairs, the counters, and where they are.

    Iterate it for ``(key, value)`` pairs; ``dict(result)`` builds a dict.

    Attributes:
        job_id: the job's id.
        output: the published output folder, or None for an in-memory result.
        counters: ``map.*``, ``reduce.*`` and ``user.*`` counters of the committed attempts.
        seconds: wall time of the run.
    """

    def __init__(
        self,
        job_id: str,
        output: str | None,
        counters: dict[str, int],
        seconds: float,
        pairs: list[tuple[Any, Any]] | None = None,
    ) -> None:
        self.job_id = job_id
        self.output = output
        self.counters = counters
        self.seconds = seconds
        self._pairs = pairs

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        if self._pairs is not None:
            return iter(self._pairs)
        assert self.output is not None
        return read_output(self.output)

    def to_dict(self) -> dict[Any, Any]:
        return dict(self)

    def summary(self) -> str:
        return summary_line(self.job_id, self.seconds, self.counters)

    def __repr__(self) -> str:
        where = self.output or "in memory"
        return f"<mrkit.Result {self.job_id} ({where}) in {self.seconds:.2f}s>"
