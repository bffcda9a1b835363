"""Ad revenue per page, written as seed 001 (serverless-MR) writes jobs: decorated functions.

The same job as ``adrevenue.py``'s class, as one function per role. A job reference without
``:Name`` makes mrkit build the job from the module's ``@mrkit.map_handler`` / ``@mrkit.reduce_handler``
functions, and a function named ``partition(key, num_bins)`` is the partitioner::

    python -c "from mrkit.tools.corpus import generate_uservisits as g
    g('data/uservisits', size_mb=10, files=4)"
    mrkit run examples/adrevenue_handlers.py data/uservisits -M 4 -o out/adrevenue

In Python: ``mrkit.run(mrkit.job_from_module(adrevenue_handlers), "data/uservisits")``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

import mrkit


@mrkit.map_handler
def map_function(line: str | list[str]) -> Iterator[tuple[str, float]]:
    """A uservisits row (a CSV line, or a ``.csv`` file's list of fields) -> (destURL, adRevenue)."""
    fields = line.split(",") if isinstance(line, str) else line
    yield fields[1], float(fields[3])


@mrkit.combine_handler
@mrkit.reduce_handler
def reduce_function(url: str, revenues: Iterable[float]) -> float:
    """Sum of the revenues of one URL (also the combiner: a sum of partial sums is the sum)."""
    return sum(revenues)


def partition(url: str, num_bins: int) -> int:
    """All the pages of one host in one output part; a CRC-32, stable on every machine."""
    return zlib.crc32(url.partition("/")[0].encode("utf-8")) % num_bins
