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

import functools
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
from mrkit.storage.base import Storage

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


def read_pairs(f: BinaryIO, fmt: str, name: str = "", first_line: int = 1) -> Iterator[tuple[Any, Any]]:
    """Iterate the pairs of one part file written by :func:`write_pairs`, from ``f``'s position
    (the start of line ``first_line``, which error messages count from).

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
    # Fast path: a whole block of lines is parsed by ONE json.loads call (_parse_columns).
    for _size, _lines, keys, values in _column_blocks(f, fmt, name, first_line, _READ_BLOCK):
        yield from zip(keys, values, strict=True)


def _column_blocks(
    f: BinaryIO, fmt: str, name: str, first_line: int, size: int
) -> Iterator[tuple[int, int, list[Any], list[Any]]]:
    """The ``tsv``/``jsonl`` blocks of whole lines read from ``f``'s position (the start of line
    ``first_line``), parsed: per block, its bytes, its lines, and its keys and values."""
    for data, newlines in _line_blocks(f, size):
        lines = _lines_in(data, newlines)
        keys, values = _parse_columns(data, fmt, name, first_line, newlines)
        yield len(data), lines, keys, values
        first_line += lines


def _line_blocks(f: BinaryIO, size: int) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines of about ``size`` bytes read from ``f`` (the last one may lack its
    line end), each with its count of line ends."""
    tail = b""
    while True:
        chunk = f.read(size)
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
        if data:
            yield data, data.count(b"\n")
        if not chunk:
            return


def _lines_in(data: bytes, newlines: int) -> int:
    """The lines a block of ``newlines`` line ends holds (one more if its last line has no end)."""
    return newlines + (0 if data.endswith(b"\n") else 1)


def _parse_columns(
    data: bytes, fmt: str, name: str, first_line: int, newlines: int
) -> tuple[list[Any], list[Any]]:
    """The keys and the values of whole ``tsv``/``jsonl`` lines ``data`` holding ``newlines`` line
    ends (the first line is line ``first_line``), as two lists.

    The writer escapes tabs and newlines inside JSON text, so a raw tab only separates key from
    value and a raw line end only ends a pair. The block is rewritten as bytes and decoded once
    (bytes.replace is about twice as fast as str.replace on the same text, and decoding checks
    UTF-8 all the same). A ``tsv`` block becomes
    one flat JSON array ``[key1, value1, key2, value2, ...]``: no list per line to build and take
    apart, 30 % less time per block than ``[[key1, value1], ...]``. A block that does not parse goes
    to the line reader, which names the bad line; a blank line (the line reader skips it) sends
    its block there too.
    """
    if data.isspace():
        return [], []  # blank lines only: no pair (the line reader would skip every one)
    complete = data.endswith(b"\n")
    lines = newlines + (0 if complete else 1)
    body = data[:-1] if complete else data
    try:
        # A blank line fails either check below: it has no tab (tsv), and ",," does not parse.
        if fmt == "tsv":
            # One tab per line, or a line without one (`"a",1`) would pass for a pair.
            if body.count(b"\t") != lines:
                raise ValueError("not one tab per line")
            array = b"[" + body.replace(b"\t", b",").replace(b"\n", b",") + b"]"
        else:
            array = b"[" + body.replace(b"\n", b",") + b"]"
        try:
            text = array.decode("utf-8")
        except UnicodeDecodeError:
            text = _decoded(data, fmt, name, first_line)  # raises, naming the line
        del array
        # Tens of thousands of fresh objects at once: see mrkit.data.gc_pause.
        with gc_paused():
            items = json.loads(text)
            if fmt == "tsv":
                # With one tab per line, every line gives at least two items (an empty field does
                # not parse), and more only if a comma outside any string or bracket split a field:
                # twice as many items as lines means exactly a key and a value on every line.
                if len(items) != 2 * lines:
                    raise ValueError("not one key and one value per line")
                keys, values = items[0::2], items[1::2]
            else:
                if any(type(row) is not list for row in items):
                    raise ValueError("not a [key, value] array")
                keys = [k for k, _ in items]  # unpacking checks that every row has two fields
                values = [row[1] for row in items]
            if list in map(type, keys):
                keys = [_as_key(k) if type(k) is list else k for k in keys]
            return keys, values
    except ValueError:
        # split("\n"), not splitlines(): U+2028 and friends are text inside a JSON string.
        pairs = list(_read_lines(_decoded(data, fmt, name, first_line).split("\n"), fmt, name, first_line))
        return [k for k, _ in pairs], [v for _, v in pairs]


def _decoded(data: bytes, fmt: str, name: str, first_line: int) -> str:
    """``data`` (lines from line ``first_line`` on) decoded; else an error naming the bad line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        bad = data[exc.start : exc.end].hex()
        raise InputError(
            f"{name} line {line} is not valid {fmt} output (not UTF-8: byte(s) 0x{bad}, {exc.reason})"
        ) from None


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
    """Read back the ``(key, value)`` pairs of a published output folder, in part order.

    In a single-threaded process on Linux, a local folder's parts are parsed in a forked child,
    block by block, while the caller consumes its first block and then each block the child hands
    back (:mod:`mrkit.data.prefetch`); the pairs and their order are the same either way.

    Args:
        folder: a local folder or storage URL written by ``mrkit.run(..., output=folder)``.

    Raises:
        InputError: when the folder has no ``_SUCCESS`` (the job did not finish) or a part is corrupt.
    """
    from mrkit.data.prefetch import ReadAhead, can_prefetch
    from mrkit.storage import open_storage
    from mrkit.storage.local import LocalStorage

    url = os.fspath(folder)
    storage = open_storage(url)
    raw = storage.get_or_none(SUCCESS_KEY)
    if raw is None:
        raise InputError(f"{url} has no {SUCCESS_KEY} marker: the job that writes it did not finish")
    info = json.loads(raw or b"{}")
    fmt = info.get("format", "tsv")
    parts = [(k, f"{url}/{k}") for k in sorted(k for k in storage.list("part-") if "/" not in k)]
    # Only local text parts are read ahead (pickle parts load fast as they are): no other storage
    # is even asked for sizes.
    if not (parts and isinstance(storage, LocalStorage) and fmt != "pickle"):
        yield from _read_from(storage, parts, fmt, (0, 0, 1))
        return
    # The caller parses the first block itself while the child starts on the rest: a small block,
    # so that pairs flow at once and the child, whose work is most of the read, starts early.
    with storage.open_read(parts[0][0]) as f:
        head, newlines = next(_line_blocks(f, _HEAD_BLOCK), (b"", 0))
    position = (0, len(head), 1 + (_lines_in(head, newlines) if head else 0))
    left = sum(storage.size(key) for key, _ in parts) - len(head)
    ahead = None
    if can_prefetch(left, local=True):
        # functools.partial binds ``position`` now: it moves on below, and the child starts from
        # where the head ended.
        ahead = ReadAhead(functools.partial(_parsed_blocks, storage, parts, fmt, position))
    try:
        if head:
            yield from zip(*_parse_columns(head, fmt, parts[0][1], 1, newlines), strict=True)
        if ahead is not None:
            for block in ahead.items():
                position, keys, values = block  # position: where to read on if the child stops
                yield from zip(keys, values, strict=True)
            if ahead.complete:
                return
        # No child, or one that stopped short: read on from the last block taken, so that a
        # corrupt line fails here with the same sentence as without a child.
        yield from _read_from(storage, parts, fmt, position)
    finally:
        if ahead is not None:
            ahead.cancel()


# A position in an output: (part index, byte offset in that part, number of the line there).
_Position = tuple[int, int, int]
_HEAD_BLOCK = 1 << 18  # the first block, which the caller of read_output parses itself
_AHEAD_BLOCK = 1 << 20  # the blocks a read-ahead child parses and hands back one at a time


def _read_from(
    storage: Storage, parts: list[tuple[str, str]], fmt: str, position: _Position
) -> Iterator[tuple[Any, Any]]:
    """The pairs of ``parts`` (key, name for messages) from ``position`` on, read here."""
    index, offset, line = position
    for i in range(index, len(parts)):
        key, name = parts[i]
        with storage.open_read(key, start=offset) as f:
            yield from read_pairs(f, fmt, name, line)
        offset, line = 0, 1


def _parsed_blocks(
    storage: Storage, parts: list[tuple[str, str]], fmt: str, position: _Position
) -> Iterator[tuple[_Position, list[Any], list[Any]]]:
    """The pairs of ``parts`` from ``position`` on, parsed in blocks: per block, the position after
    it and its keys and values as two lists (a read-ahead child's items: two flat lists unpickle
    in about half the time of a list of pairs, and the parse makes them as such). Raises on the
    first block that does not parse."""
    index, offset, line = position
    for i in range(index, len(parts)):
        key, name = parts[i]
        with storage.open_read(key, start=offset) as f:
            for size, lines, keys, values in _column_blocks(f, fmt, name, line, _AHEAD_BLOCK):
                offset += size
                line += lines
                yield (i, offset, line), keys, values
        offset, line = 0, 1
