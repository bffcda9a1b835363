"""Ad revenue per page (seed 001): sum ``adRevenue`` by ``destURL`` over uservisits rows.

Input: CSV rows without a header in the uservisits schema of the Pavlo et al. benchmark::

    sourceIP,destURL,visitDate,adRevenue,userAgent,countryCode,languageCode,searchWord,duration

``.csv`` files arrive as lists of fields; any other text file as lines, which the mapper splits on
``,`` (no uservisits field holds a comma). Output: ``(destURL, total revenue)`` with a float total.

It shows the three optional hooks of a job besides ``mapper`` and ``reducer``:

* a **combiner** (the reducer itself: a sum of partial sums is the sum), so each map task sends one
  partial sum per URL instead of one value per visit;
* a custom **partitioner** in seed 001's ``partition(key, num_bins)`` style: the CRC-32 of the URL's
  *host*, so all the pages of one site land in the same output part. It must be stable across
  processes and machines -- never ``hash(str)``, which is salted per process.

Floating-point sums depend on the order of the additions, which differs with the number of map
tasks and the combiner, so totals from different runs may differ in the last bits.

Make some data and run it::

    python -c "from mrkit.tools.corpus import generate_uservisits as g
    g('data/uservisits', size_mb=10, files=4)"
    mrkit run examples/adrevenue.py:AdRevenue data/uservisits -M 4 -o out/adrevenue
    python examples/adrevenue.py data/uservisits [-o out/adrevenue]    # no -o: prints the top 10
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Iterable, Iterator

import mrkit

DEST_URL, AD_REVENUE = 1, 3  # field positions in a uservisits row


def host(url: str) -> str:
    """The host part of a scheme-less URL: ``www.example.com/a/b.html`` -> ``www.example.com``."""
    return url.partition("/")[0]


def partition_by_host(url: str, num_bins: int) -> int:
    """Seed 001's partition function: a stable bin in ``range(num_bins)`` for ``url``, by its host."""
    return zlib.crc32(host(url).encode("utf-8")) % num_bins


class AdRevenue(mrkit.Job):
    """destURL -> sum of adRevenue, with a combiner and a by-host partitioner."""

    def mapper(self, row: list[str] | str) -> Iterator[tuple[str, float]]:
        fields = row.split(",") if isinstance(row, str) else row
        if len(fields) > AD_REVENUE:  # skip blank or truncated rows
            yield fields[DEST_URL], float(fields[AD_REVENUE])

    def combiner(self, url: str, revenues: Iterable[float]) -> float:
        return sum(revenues)

    def reducer(self, url: str, revenues: Iterable[float]) -> float:
        return sum(revenues)

    def partitioner(self, url: str, n_reduce: int) -> int:
        return partition_by_host(url, n_reduce)


def main(argv: list[str] | None = None) -> None:
    """``python examples/adrevenue.py INPUT... [-o OUT]``: revenue per URL with ``mrkit.run``."""
    parser = argparse.ArgumentParser(description="Sum ad revenue per destURL over uservisits CSV rows.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="uservisits .csv files, globs or folders")
    parser.add_argument("-o", "--output", help="output folder (default: print the top URLs)")
    parser.add_argument("-M", "--n-reduce", type=int, default=None, help="number of reduce partitions")
    parser.add_argument("--executor", default="processes", help="inline, processes (default), redis://…")
    parser.add_argument("--top", type=int, default=10, help="how many URLs to print without -o")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result in OUT")
    args = parser.parse_args(argv)
    result = mrkit.run(
        AdRevenue(),
        args.inputs,
        output=args.output,
        n_reduce=args.n_reduce,
        executor=args.executor,
        overwrite=args.overwrite,
    )
    if args.output is None:
        for url, revenue in sorted(result, key=lambda kv: (-kv[1], kv[0]))[: args.top]:
            print(f"{revenue:14,.2f}  {url}")


if __name__ == "__main__":
    main()
