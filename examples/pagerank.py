"""PageRank on a generated graph: one mrkit job per iteration, a convergence check in the driver.

Each iteration is one map → reduce over ``(node, (rank, links))`` pairs: the mapper sends the node's
links to itself and ``rank / len(links)`` to every node it links to; the reducer adds what a node
received into its new rank, ``(1 - d) / N + d * received``. The driver feeds each iteration's
in-memory result to the next (``result = mrkit.run(step, result)``: pairs keep their Python types,
nothing is written as text between iterations) and stops when the ranks moved less than
``tolerance`` in total (L1), or after ``iterations``.

Run it::

    python examples/pagerank.py --nodes 2000 --iterations 10          # prints the top 10 nodes
    python examples/pagerank.py --nodes 2000 --executor inline --tolerance 1e-9

Every generated node links to 1 to 8 others (no dangling node, so no rank leaks away).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable, Iterator

import mrkit

DAMPING = 0.85

Node = int
State = tuple[float, list[Node]]  # (rank, out-links)


def generate_graph(nodes: int, seed: int = 1) -> dict[Node, list[Node]]:
    """A random directed graph: every node links to 1 to 8 distinct other nodes."""
    rng = random.Random(seed)
    return {
        n: sorted(rng.sample([m for m in range(nodes) if m != n], rng.randint(1, 8))) for n in range(nodes)
    }


class PageRankStep(mrkit.Job):
    """One PageRank iteration over ``(node, (rank, links))`` records (``params``: ``nodes``, ``damping``)."""

    def mapper(self, record: tuple[Node, State]) -> Iterator[tuple[Node, tuple[str, object]]]:
        node, (rank, links) = record
        yield node, ("links", links)
        share = rank / len(links)
        for target in links:
            yield target, ("rank", share)

    def reducer(self, node: Node, values: Iterable[tuple[str, object]]) -> State:
        received = 0.0
        links: list[Node] = []
        for kind, value in values:
            if kind == "links":
                links = value  # type: ignore[assignment]
            else:
                received += value  # type: ignore[operator]
        damping = float(self.params.get("damping", DAMPING))
        return (1.0 - damping) / int(self.params["nodes"]) + damping * received, links


def pagerank(
    graph: dict[Node, list[Node]],
    *,
    iterations: int = 10,
    tolerance: float = 1e-6,
    executor: str = "processes",
    workers: int | None = None,
) -> tuple[dict[Node, float], int]:
    """Ranks of ``graph`` after at most ``iterations`` mrkit runs; also how many ran."""
    n = len(graph)
    step = PageRankStep(params={"nodes": n, "damping": DAMPING}, name="pagerank")
    state: object = mrkit.Records([(node, (1.0 / n, links)) for node, links in graph.items()])
    ranks = {node: 1.0 / n for node in graph}
    done = 0
    while done < iterations:
        result = mrkit.run(step, state, executor=executor, workers=workers, quiet=True)
        done += 1
        new = {node: rank for node, (rank, _links) in result}
        moved = sum(abs(new[node] - ranks[node]) for node in graph)
        ranks, state = new, result
        if moved < tolerance:
            break
    return ranks, done


def reference(graph: dict[Node, list[Node]], iterations: int, damping: float = DAMPING) -> dict[Node, float]:
    """The same iterations in plain Python (the tests' oracle)."""
    n = len(graph)
    ranks = {node: 1.0 / n for node in graph}
    for _ in range(iterations):
        received = dict.fromkeys(graph, 0.0)
        for node, links in graph.items():
            for target in links:
                received[target] += ranks[node] / len(links)
        ranks = {node: (1.0 - damping) / n + damping * received[node] for node in graph}
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(
        description="PageRank of a generated graph, one mrkit run per iteration."
    )
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--executor", default="processes")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    ranks, ran = pagerank(
        generate_graph(args.nodes),
        iterations=args.iterations,
        tolerance=args.tolerance,
        executor=args.executor,
    )
    print(f"{ran} iterations; ranks sum to {sum(ranks.values()):.6f}")
    for node, rank in sorted(ranks.items(), key=lambda nr: -nr[1])[: args.top]:
        print(f"{node}\t{rank:.6f}")


if __name__ == "__main__":
    main()
