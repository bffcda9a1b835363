"""Inverted index: for every word, the sorted list of the documents that contain it.

Input records are documents, in either of two shapes:

* a JSON object ``{"doc": ID, "text": "..."}`` -- one per line of a ``.jsonl`` / ``.ndjson`` file;
  ``ID`` is any JSON string or number (use one type for all documents, so ids sort);
* a text line ``ID<TAB>text`` -- one per line of any other text file; ``ID`` is the string before
  the first tab (a line without a tab is a document whose id is ``""``).

Records carry no file name or line number, so the document id must be in the record itself; to
index plain text files, turn each line (or file) into one of the shapes above first.

Words are lower-cased runs of ``[a-z0-9']`` as in ``wordcount.py``. The mapper emits ``(word, doc)``
once per distinct word of a document; the reducer returns ``sorted(set(docs))``, so the output is
``word -> [doc, doc, ...]``, each id once, in order. There is no combiner: a combiner must emit
values of the mapper's type (one doc id), and the mapper already drops repeats within a document.

Run it::

    mrkit run examples/inverted_index.py:InvertedIndex docs.jsonl -o OUT
    python examples/inverted_index.py docs.jsonl -o OUT
    python examples/inverted_index.py docs.jsonl            # prints word TAB ["doc", ...]
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import mrkit

WORD = re.compile(r"[a-z0-9']+")

DocId = str | int | float


def parse_document(record: dict[str, Any] | str) -> tuple[DocId, str]:
    """Split a record into ``(doc_id, text)``; see the module docstring for the two shapes."""
    if isinstance(record, dict):
        return record["doc"], record.get("text") or ""
    doc, _, text = record.partition("\t")
    return doc, text


class InvertedIndex(mrkit.Job):
    """word -> sorted list of the ids of the documents containing it."""

    def mapper(self, record: dict[str, Any] | str) -> Iterator[tuple[str, DocId]]:
        doc, text = parse_document(record)
        for word in set(WORD.findall(text.lower())):
            yield word, doc

    def reducer(self, word: str, docs: Iterable[DocId]) -> list[DocId]:
        return sorted(set(docs))


def main(argv: list[str] | None = None) -> None:
    """``python examples/inverted_index.py INPUT... [-o OUT]``: index INPUT with ``mrkit.run``."""
    parser = argparse.ArgumentParser(description="Build an inverted index (word -> doc ids) with mrkit.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="{doc, text} .jsonl or ID<TAB>text files")
    parser.add_argument("-o", "--output", help="output folder (default: print word TAB doc ids)")
    parser.add_argument("--executor", default="processes", help="inline, processes (default), redis://…")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result in OUT")
    args = parser.parse_args(argv)
    result = mrkit.run(
        InvertedIndex(), args.inputs, output=args.output, executor=args.executor, overwrite=args.overwrite
    )
    if args.output is None:
        for word, docs in result:
            print(f"{word}\t{json.dumps(docs)}")


if __name__ == "__main__":
    main()
