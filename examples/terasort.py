"""A distributed sort of 100-byte records, TeraSort's shape, and the checker that validates it.

Each record is one line of 99 characters plus its newline: a 10-character key of printable ASCII
and an 89-character payload (the row number and filler). The job maps each line to ``(key,
payload)`` and keeps every value (no reducer); ``sort_output=True`` range-partitions the keys from
a sample of the map output, so the parts read in order are globally sorted. Equal keys keep all
their payloads (``sort_values=True`` orders them too, so the output is deterministic).

Run it::

    python examples/terasort.py generate data/terasort 100000 --files 4   # 100,000 records, 9.5 MB
    mrkit run examples/terasort.py:TeraSort data/terasort -M 4 -o out/terasort --sort-output --sort-values
    python examples/terasort.py check out/terasort 100000                 # exit 0: sorted and complete
    python examples/terasort.py sort data/terasort -o out/terasort -M 4    # the run, from Python
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Iterator

import mrkit

KEY = 10
RECORD = 100  # bytes per record, newline included
PRINTABLE = "".join(chr(c) for c in range(33, 127))  # no space: keys never end in a stripped blank


class TeraSort(mrkit.Job):
    """``line -> (key, payload)``; no reducer: every payload is kept under its key."""

    def mapper(self, line: str) -> Iterator[tuple[str, str]]:
        yield line[:KEY], line[KEY:]


def generate(folder: str, records: int, files: int = 4, seed: int = 1) -> list[str]:
    """Write ``records`` random 100-byte records into ``files`` text files under ``folder``."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    per_file = -(-records // files)
    row = 0
    for f in range(files):
        path = os.path.join(folder, f"part-{f:03d}.txt")
        with open(path, "w", encoding="ascii", newline="\n") as out:
            for _ in range(min(per_file, records - row)):
                key = "".join(rng.choices(PRINTABLE, k=KEY))
                payload = f"{row:012d}" + "".join(
                    rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=RECORD - KEY - 12 - 1)
                )
                out.write(key + payload + "\n")
                row += 1
        paths.append(path)
    return paths


def check(output: str, records: int) -> list[str]:
    """What is wrong with a sorted output folder (empty list: sorted by key, ``records`` records)."""
    problems: list[str] = []
    previous: str | None = None
    count = 0
    for key, payload in mrkit.read_output(output):
        if previous is not None and key < previous:
            problems.append(f"record {count}: key {key!r} after {previous!r}")
            if len(problems) > 10:
                break
        if len(key) != KEY or len(payload) != RECORD - KEY - 1:
            problems.append(f"record {count}: a key of {len(key)} or payload of {len(payload)} characters")
        previous = key
        count += 1
    if count != records and len(problems) <= 10:
        problems.append(f"{count:,} records in the output, {records:,} generated")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TeraSort-shaped sort with mrkit: generate, sort, check.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write random 100-byte records")
    gen.add_argument("folder")
    gen.add_argument("records", type=int)
    gen.add_argument("--files", type=int, default=4)
    run = sub.add_parser("sort", help="sort the records of INPUT into OUTPUT")
    run.add_argument("inputs", nargs="+")
    run.add_argument("-o", "--output", required=True)
    run.add_argument("-M", "--n-reduce", type=int, default=4)
    run.add_argument("--executor", default="processes")
    chk = sub.add_parser("check", help="exit 0 when OUTPUT holds RECORDS records sorted by key")
    chk.add_argument("output")
    chk.add_argument("records", type=int)
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args.folder, args.records, args.files)
        return 0
    if args.command == "sort":
        mrkit.run(
            TeraSort(),
            args.inputs,
            output=args.output,
            n_reduce=args.n_reduce,
            executor=args.executor,
            sort_output=True,
            sort_values=True,
        )
        return 0
    problems = check(args.output, args.records)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("sorted" if not problems else "NOT SORTED", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
