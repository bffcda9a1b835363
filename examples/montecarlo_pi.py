"""Monte Carlo π (seed 000): throw random points at the unit square, count those inside the circle.

Each input record is one batch of points, ``[index, points]`` -- e.g. the inline inputs of
``montecarlo_pi.json``: ``[[0, 250000], [1, 250000], ...]``. The mapper draws ``points`` points
from ``random.Random(f"montecarlo_pi:{seed}:{index}")`` (``seed`` is the job parameter, default 0),
so every batch has its own stream and the result depends only on the records and the seed, never
on the executor, the number of map tasks or how the records are split among them. (A bare number
of points is refused: records carry no position, so equal batches would draw the same points.)

All map output goes under the one key ``"pi"`` as ``(inside, points)`` tuples; the combiner adds
them up per map task and the reducer yields three pairs, numbers not strings (seed 000's reducer
returned a formatted string). ``montecarlo_pi.json`` (8 batches of 250,000 points, seed 1) gives::

    "inside"  1570674          points that fell inside the quarter circle
    "pi"      3.141348         4 * inside / points
    "points"  2000000          points drawn in total

Run it::

    mrkit run examples/montecarlo_pi.json [--overwrite]    # output: out/montecarlo_pi/ at the repo root
    mrkit run examples/montecarlo_pi.json -o OUT --param seed=7
    python examples/montecarlo_pi.py [TASKS [POINTS_PER_TASK]]   # prints the estimate
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable, Iterator, Sequence

import mrkit

Counts = tuple[int, int]  # (inside, points)


def sample(seed: int | str, index: int, points: int) -> int:
    """How many of ``points`` uniform points in [0, 1)² fall inside the unit circle (batch ``index``)."""
    rand = random.Random(f"montecarlo_pi:{seed}:{index}").random
    return sum(rand() ** 2 + rand() ** 2 <= 1.0 for _ in range(points))


class MonteCarloPi(mrkit.Job):
    """Estimate π from batches of random points; ``params["seed"]`` chooses the random streams."""

    def mapper(self, record: Sequence[int]) -> Iterator[tuple[str, Counts]]:
        if isinstance(record, (int, float)) or len(record) != 2:
            raise ValueError(f"a Monte Carlo π record is [index, points], got {record!r}")
        index, points = record
        yield "pi", (sample(self.params.get("seed", 0), int(index), int(points)), int(points))

    def combiner(self, key: str, counts: Iterable[Counts]) -> Counts:
        inside = points = 0
        for i, n in counts:
            inside += i
            points += n
        return inside, points

    def reducer(self, key: str, counts: Iterable[Counts]) -> Iterator[tuple[str, float | int]]:
        inside, points = self.combiner(key, counts)
        yield "inside", inside
        yield "pi", 4 * inside / points if points else float("nan")
        yield "points", points


def batches(tasks: int, points_per_task: int) -> list[list[int]]:
    """The inline records ``[[0, points_per_task], [1, points_per_task], ...]``."""
    return [[i, points_per_task] for i in range(tasks)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Estimate pi by Monte Carlo on all local cores.")
    parser.add_argument("tasks", type=int, nargs="?", default=8, help="batches of points (map tasks)")
    parser.add_argument("points", type=int, nargs="?", default=250_000, help="points per batch")
    args = parser.parse_args()
    n_tasks, per_task = args.tasks, args.points
    result = dict(
        mrkit.run(
            MonteCarloPi(params={"seed": 1}),
            mrkit.Records(batches(n_tasks, per_task)),
            n_map=n_tasks,
            n_reduce=1,
        )
    )
    print(f"pi ~= {result['pi']:.6f} from {result['points']:,} points ({result['inside']:,} inside)")
