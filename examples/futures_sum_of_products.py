"""Seed 002 (SCOOP's map/reduce tutorial) on mrkit.futures: the sum of the products of two ranges.

Run it either way::

    python examples/futures_sum_of_products.py
    python -m mrkit [-n 2] [--executor inline] examples/futures_sum_of_products.py

Both variants print ``Sum of the products equals 843350`` (the tutorial's own output says 20100,
which is the sum of 1..200; the sum of x * (x + 100) for x in 1..100 is 843350).

* ``futures.map`` then ``functools.reduce``: every product comes back to this process, which sums.
* ``futures.map_reduce``: each worker sums its own products and the partial sums are combined in
  the workers too, so only one number per chunk travels back.
"""

from __future__ import annotations

import functools

from mrkit import futures


def product(x: int, y: int) -> int:
    """Return the product of the arguments."""
    return x * y


def add(x: int, y: int) -> int:
    """Return the sum of the arguments (SCOOP's tutorial calls it ``sum``, shadowing the builtin)."""
    return x + y


if __name__ == "__main__":
    a = range(1, 101)
    b = range(101, 201)

    results = futures.map(product, a, b)
    total = functools.reduce(add, results)
    print(f"Sum of the products equals {total}")

    total = futures.map_reduce(product, add, a, b)
    print(f"Sum of the products equals {total}")
