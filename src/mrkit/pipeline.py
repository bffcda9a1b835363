"""Seed 001's fluent pipelines: stages chained into steps, pipelines merged into a DAG.

    counts = mrkit.Pipeline("texts/").map(words).combine(total).reduce(total, n_reduce=4)
    top = counts.map(to_ranking).reduce(top10, n_reduce=1)
    top.run(output="out/top")                          # one multi-step job (mrkit.Step per reduce)

    visits = mrkit.Pipeline("uservisits/").map(by_ip).reduce(revenue).finish()      # an id
    ranks = mrkit.Pipeline("rankings/").map(by_ip_rank).reduce(avg_rank).finish()
    joined = mrkit.Pipeline.merge([visits, ranks]).reduce(join).run()

Each ``reduce`` closes one step (:class:`~mrkit.model.steps.Step`): the ``map``, ``combine`` and
``shuffle`` (partitioner) given since the previous one, and the reducer with its ``n_reduce``. Stages
after the last ``reduce`` make a last step without reducer (map-only). ``map`` may be left out of a
step: its input pairs pass through. A pipeline is immutable: every call returns a new one, so a
pipeline may be the start of several others.

A merged pipeline's input is the union of its sources' outputs, ``(key, value)`` pairs with their
exact types: :meth:`run` runs each source (its own inputs and steps), then this pipeline's steps
over every pair they produced. ``finish()`` names a pipeline by an id (valid in this process) that
``merge`` accepts, as seed 001's driver does; ``merge`` takes pipelines too.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from mrkit.errors import ConfigError
from mrkit.model.job import Job
from mrkit.model.steps import Step

_FINISHED: dict[str, Pipeline] = {}
_ids = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A chain of map → reduce steps over ``inputs`` (or over the outputs of ``sources``)."""

    inputs: Any = None
    name: str = "pipeline"
    steps: tuple[Step, ...] = ()
    pending: Step | None = None  # the stages given since the last reduce
    sources: tuple[Pipeline, ...] = ()

    # -- building ----------------------------------------------------------------------------

    def map(self, mapper: Callable[..., Any]) -> Pipeline:
        """The mapper of the next step (a second ``map`` before any ``reduce`` closes the current
        step without reducer: its values are emitted under their keys, or, last, it is map-only)."""
        if self.pending is not None and self.pending.mapper is not None:
            return self._close().map(mapper)
        return self._with(mapper=mapper)

    def combine(self, combiner: Callable[..., Any]) -> Pipeline:
        return self._with(combiner=combiner)

    def shuffle(self, partitioner: Callable[..., int]) -> Pipeline:
        """How the next step's keys go to its reducers: ``partitioner(key, n_reduce)``."""
        return self._with(partitioner=partitioner)

    def reduce(self, reducer: Callable[..., Any], *, n_reduce: int | None = None) -> Pipeline:
        """Close the current step with ``reducer`` (and its number of reduce tasks)."""
        return self._with(reducer=reducer, n_reduce=n_reduce)._close()

    def finish(self) -> str:
        """An id for this pipeline, which :meth:`merge` accepts (in this process)."""
        pipeline_id = f"{self.name}-{next(_ids)}"
        _FINISHED[pipeline_id] = self
        return pipeline_id

    @classmethod
    def merge(cls, pipelines: Iterable[Pipeline | str], *, name: str = "merged") -> Pipeline:
        """A pipeline whose input is every pair the given pipelines (or ``finish()`` ids) produce."""
        found = []
        for p in pipelines:
            if isinstance(p, str):
                if p not in _FINISHED:
                    raise ConfigError(
                        f"no finished pipeline {p!r}: merge takes pipelines or their finish() ids"
                    )
                p = _FINISHED[p]
            if not isinstance(p, Pipeline):
                raise ConfigError(f"merge takes pipelines or finish() ids, got {type(p).__name__}")
            found.append(p)
        if not found:
            raise ConfigError("merge needs at least one pipeline")
        return cls(name=name, sources=tuple(found))

    def _with(self, **stage: Any) -> Pipeline:
        current = self.pending or Step()
        taken = [k for k, v in stage.items() if v is not None and getattr(current, k) is not None]
        if taken:
            raise ConfigError(f"pipeline {self.name!r}: the current step already has a {taken[0]}")
        changes = {k: v for k, v in stage.items() if v is not None}
        return dataclasses.replace(self, pending=dataclasses.replace(current, **changes))

    def _close(self) -> Pipeline:
        if self.pending is None:
            return self
        step = dataclasses.replace(self.pending, name=self.pending.name or f"stage {len(self.steps) + 1}")
        return dataclasses.replace(self, steps=(*self.steps, step), pending=None)

    # -- running -----------------------------------------------------------------------------

    def job(self) -> Job:
        """The multi-step :class:`~mrkit.model.job.Job` of this pipeline's own steps."""
        steps = self._close().steps
        if not steps:
            raise ConfigError(f"pipeline {self.name!r} has no stage: give it map(...) or reduce(...)")
        return Job(steps=steps, name=self.name)

    def run(self, *, executor: Any = "processes", **options: Any) -> Any:
        """Run the sources (if merged), then this pipeline's steps; return the :class:`mrkit.Result`.

        ``options`` are :func:`mrkit.run`'s; ``output`` applies to this pipeline only (its sources
        keep their results in memory).
        """
        from mrkit.api import run
        from mrkit.coordination.prepare import Records

        if self.sources:
            source_options = {k: v for k, v in options.items() if k not in ("output", "overwrite", "job_id")}
            source_options["quiet"] = True
            results = [source.run(executor=executor, **source_options) for source in self.sources]
            inputs: Any = Records([pair for result in results for pair in result])
        elif self.inputs is None:
            raise ConfigError(f"pipeline {self.name!r} has no inputs: mrkit.Pipeline(inputs) or merge([...])")
        else:
            inputs = self.inputs
        return run(self.job(), inputs, executor=executor, **options)
