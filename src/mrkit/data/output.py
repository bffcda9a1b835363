"""How reduce output becomes bytes, and how published output is read back.

Formats (one per job):

    tsv     JSON key TAB JSON value, one pair per line (mrjob's convention)
    jsonl   one JSON array ``[key, value]`` per line
    pickle  framed pickled lists of pairs (used for in-memory results: exact Python types)

What survives ``tsv``/``jsonl`` and :func:`read_output`: str, int, float, bool and None exactly;
a tuple *key* comes back as a tuple (a JSON array in key position is read back as a tuple, nested
ones too, so keys stay hashable and ``dict(read_output(...))`` works); in *values* tuples come back
as lists; sets and frozensets are written as sorted lists, bytes as UTF-8 text, and dict keys as
strings (JSON's rules). Anything else is refused (:class:`UnencodableOutput`).

A published output folder holds ``part-00000 … part-(M-1)`` and ``_SUCCESS`` (a small JSON
document naming the format and counts), written last.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Iterable, Iterator
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, BinaryIO

from mrkit.data.gc_pause import gc_paused
from mrkit.errors import ConfigError, InputError
from mrkit.model.layout import SUCCESS_KEY

FORMATS = ("tsv", "jsonl", "pickle")
_LEN = struct.Struct("<I")
_BATCH = 4096
_READ_BLOCK = 1 << 22  # tsv/jsonl are parsed in blocks of whole lines of about this many bytes


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


class UnencodableOutput(TypeError):
    """An output pair that the job's output format cannot encode; deterministic, so never retried.

    Attributes:
        key: the key of the pair (its repr is used when the key itself is the culprit).
        cause: the encoder's own message.
    """

    def __init__(self, key: Any, fmt: str, cause: str) -> None:
        self.key = key
        self.fmt = fmt
        self.cause = cause
        super().__init__(f"output pair with key {key!r:.60} cannot be written as {fmt}: {cause}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(
        f"{type(value).__name__} value {value!r:.60} is not JSON-serialisable; convert it in the reducer "
        "or run with output=None (in-memory results keep Python types)"
    )


def write_pairs(f: BinaryIO, pairs: Iterable[tuple[Any, Any]], fmt: str) -> int:
    """Write ``pairs`` to ``f`` in ``fmt``; returns how many pairs were written.

    Raises:
        UnencodableOutput: a pair is not a ``(key, value)`` pair, or ``fmt`` cannot encode it (an
            object that is not JSON-serialisable for ``tsv``/``jsonl``, an unpicklable one for
            ``pickle``). Sets and bytes are written as sorted lists and UTF-8 text.

    >>> import io; buf = io.BytesIO()
    >>> write_pairs(buf, [("pi", 3.14), (("a", 1), [2])], "tsv")
    2
    >>> buf.getvalue()
    b'"pi"\\t3.14\\n["a",1]\\t[2]\\n'
    """
    n = 0
    if fmt == "pickle":
        batch: list[tuple[Any, Any]] = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) >= _BATCH:
                n += _write_frame(f, batch)
                batch = []
        if batch:
            n += _write_frame(f, batch)
        return n
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default).encode
    lines: list[str] = []
    for pair in pairs:
        try:
            key, value = pair
        except (TypeError, ValueError):
            raise UnencodableOutput(
                pair, fmt, f"the reducer must yield (key, value) pairs, got {type(pair).__name__}"
            ) from None
        tk, tv = type(key), type(value)
        try:
            if (tk is str or tk is int) and (tv is str or tv is int or (tv is float and value - value == 0)):
                # The common pair (a str or int key, a str, int or finite float value) written by
                # hand: the same bytes as the encoder's (encode_basestring is what it calls for str,
                # repr what it writes for int and finite float), without its per-call machinery.
                ks = encode_basestring(key) if tk is str else int.__repr__(key)
                vs = encode_basestring(value) if tv is str else repr(value)
                lines.append(f"{ks}\t{vs}\n" if fmt == "tsv" else f"[{ks},{vs}]\n")
            elif fmt == "tsv":
                lines.append(f"{dumps(key)}\t{dumps(value)}\n")
            else:
                lines.append(dumps([key, value]) + "\n")
        except (TypeError, ValueError) as exc:  # ValueError: a circular reference, an int too long
            raise UnencodableOutput(key, fmt, str(exc)) from None
        if len(lines) >= _BATCH:
            f.write("".join(lines).encode())
            n += len(lines)
            lines = []
    if lines:
        f.write("".join(lines).encode())
        n += len(lines)
    return n


def _write_frame(f: BinaryIO, batch: list[tuple[Any, Any]]) -> int:
    try:
        data = pickle.dumps(batch, protocol=5)
    except Exception as exc:
        # Find the pair to name: pickling one at a time is slow, but only on this failure path.
        for pair in batch:
            try:
                pickle.dumps(pair, protocol=5)
            except Exception as one:
                key = pair[0] if isinstance(pair, tuple) and len(pair) == 2 else pair
                raise UnencodableOutput(key, "pickle", f"{type(one).__name__}: {one}") from None
        raise UnencodableOutput(batch[0][0], "pickle", f"{type(exc).__name__}: {exc}") from None
    f.write(_LEN.pack(len(data)))
    f.write(data)
    return len(batch)


def read_pairs(f: BinaryIO, fmt: str, name: str = "") -> Iterator[tuple[Any, Any]]:
    """Iterate the pairs of one part file written by :func:`write_pairs`.

    For ``tsv``/``jsonl`` a key that is a JSON array is returned as a tuple (module docstring).

    >>> import io; buf = io.BytesIO(b'["a",1]\\t[2]\\n')
    >>> list(read_pairs(buf, "tsv"))
    [(('a', 1), [2])]
    """
    if fmt == "pickle":
        while True:
            head = f.read(4)
            if not head:
                return
            (size,) = _LEN.unpack(head)
            yield from pickle.loads(f.read(size))
        return
    # Fast path: a whole block of lines is parsed by ONE json.loads call. The writer escapes tabs and
    # newlines inside JSON text, so a raw "\t" only separates key from value and a raw "\n" only
    # ends a pair: turning them into "," and "],[" makes the block one JSON array of [key, value]
    # arrays. A block that does not parse is re-read line by line, to name the bad line.
    first_line = 1
    tail = b""
    while True:
        chunk = f.read(_READ_BLOCK)
        block = tail + chunk
        if not chunk:
            end = len(block)
        else:
            end = block.rfind(b"\n") + 1
            if end == 0:  # one line longer than a block: read on
                tail = block
                continue
        tail = block[end:]
        data = block[:end]
        newlines = data.count(b"\n")
        if data.strip():
            yield from _parse_block(data, fmt, name, first_line, newlines)
        first_line += newlines + (0 if data.endswith(b"\n") or not data else 1)
        if not chunk:
            return


def _parse_block(data: bytes, fmt: str, name: str, first_line: int, newlines: int) -> list[tuple[Any, Any]]:
    """The pairs of whole ``tsv``/``jsonl`` lines ``data`` holding ``newlines`` line ends (the first
    line is line ``first_line``).

    The block is rewritten as bytes and decoded once (bytes.replace is about twice as fast as
    str.replace on the same text, and decoding checks UTF-8 all the same). A block that does not
    parse goes to the line reader, which names the bad line; a blank line (the line reader skips
    it) sends its block there too.
    """
    complete = data.endswith(b"\n")
    lines = newlines + (0 if complete else 1)
    body = data[:-1] if complete else data
    try:
        # A blank line fails either check below: it has no tab, and "],[]" (tsv) or ",," (jsonl)
        # does not parse or unpack.
        if fmt == "tsv":
            # One tab per line, or a line without one (`"a",1`) would pass for a pair.
            if body.count(b"\t") != lines:
                raise ValueError("not one tab per line")
            array = b"[[" + body.replace(b"\t", b",").replace(b"\n", b"],[") + b"]]"
        else:
            array = b"[" + body.replace(b"\n", b",") + b"]"
        try:
            text = array.decode("utf-8")
        except UnicodeDecodeError:
            text = _decoded(data, fmt, name)  # raises, naming the position in the part's own bytes
        del array
        # Tens of thousands of fresh lists and tuples at once: see mrkit.data.gc_pause.
        with gc_paused():
            rows = json.loads(text)
            if fmt != "tsv" and any(type(row) is not list for row in rows):
                raise ValueError("not a [key, value] array")
            # Unpacking checks that every row has two fields (ValueError otherwise).
            return [((_as_key(k) if type(k) is list else k), v) for k, v in rows]
    except ValueError:
        # split("\n"), not splitlines(): U+2028 and friends are text inside a JSON string.
        return list(_read_lines(_decoded(data, fmt, name).split("\n"), fmt, name, first_line))


def _decoded(data: bytes, fmt: str, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid {fmt} output (not UTF-8): {exc}") from None


def _read_lines(raw_lines: Iterable[str], fmt: str, name: str, first_line: int) -> Iterator[tuple[Any, Any]]:
    loads = json.loads
    for lineno, raw in enumerate(raw_lines, first_line):
        line = raw.rstrip("\n")
        if not line:
            continue
        try:
            if fmt == "tsv":
                key_text, value_text = line.split("\t", 1)
                key, value = loads(key_text), loads(value_text)
            else:
                key, value = loads(line)
            yield (_as_key(key) if type(key) is list else key), value
        except ValueError as exc:
            raise InputError(f"{name} line {lineno} is not valid {fmt} output: {exc}") from exc


def _as_key(value: Any) -> Any:
    """A JSON array read in key position, as the tuple it was written from (nested ones too)."""
    if type(value) is list:
        return tuple(_as_key(v) for v in value)
    return value


def read_output(folder: str | os.PathLike[str]) -> Iterator[tuple[Any, Any]]:
    """Read back the ``(key, value)`` pairs of a published output folder, part by part.

    In a single-threaded process on Linux, the next part of a local folder is parsed in a forked
    child while the caller consumes this one (:mod:`mrkit.data.prefetch`); the pairs and their order
    are the same either way.

    Args:
        folder: a local folder or storage URL written by ``mrkit.run(..., output=folder)``.

    Raises:
        InputError: when the folder has no ``_SUCCESS`` (the job did not finish) or a part is corrupt.
    """
    from mrkit.data.prefetch import Prefetch, can_prefetch
    from mrkit.storage import open_storage
    from mrkit.storage.local import LocalStorage

    url = os.fspath(folder)
    storage = open_storage(url)
    raw = storage.get_or_none(SUCCESS_KEY)
    if raw is None:
        raise InputError(f"{url} has no {SUCCESS_KEY} marker: the job that writes it did not finish")
    info = json.loads(raw or b"{}")
    fmt = info.get("format", "tsv")
    parts = sorted(k for k in storage.list("part-") if "/" not in k)
    # Only a local part may be read ahead (and pickle parts load fast as they are): any other
    # storage is not even asked for sizes.
    local = isinstance(storage, LocalStorage) and fmt != "pickle"

    def part_pairs(key: str) -> Iterator[tuple[Any, Any]]:
        with storage.open_read(key) as f:
            yield from read_pairs(f, fmt, f"{url}/{key}")

    ahead: Prefetch | None = None
    try:
        for i, key in enumerate(parts):
            pairs = ahead.result() if ahead is not None else None
            ahead = None
            following = parts[i + 1] if local and i + 1 < len(parts) else None
            if following is not None and can_prefetch(storage.size(following), local):
                ahead = Prefetch(lambda k=following: list(part_pairs(k)))  # type: ignore[misc]
            yield from part_pairs(key) if pairs is None else pairs
    finally:
        if ahead is not None:
            ahead.cancel()
