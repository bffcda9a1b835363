"""Reading: turn one :class:`~mrkit.model.task.InputSplit` into records, in batches, fast.

:func:`open_split` returns a :class:`SplitReader`; iterate ``reader.batches()`` (lists of records,
each with its position for error messages) or ``reader.records()`` (flat). The contract:

* **Which lines.** A split owns every line whose first byte lies in ``[start, start + length)``
  (``length == -1``: to the end). The reader starts at ``start - 1`` and skips through the first
  ``b"\\n"`` (that line belongs to the previous split), and finishes the line that straddles the
  end. So for any cut points every line of a file is read exactly once, in order; the bytes owned
  by a file's splits (``bytes_read``) add up to its size. Lines end at ``b"\\n"`` only (never
  ``str.splitlines``, which also splits on ``\\x0b``, ``\\x1c``, ``\\u2028``... and would disagree
  with the byte-level cuts); a final line without ``"\\n"`` is a line; an empty file has none.
* **Formats.** ``text``: one ``str`` per line, without its ``"\\n"`` and without the ``"\\r"`` of a
  ``"\\r\\n"``. ``jsonl``: ``json.loads`` of every non-blank line (blank lines are not records).
  ``csv``: one list of ``str`` per line, through :mod:`csv` (excel dialect, no header handling).
  One CSV record per line: a quoted field holding a line break cannot be read correctly across
  split cuts, so it is refused (``InputError``) wherever it is, or skipped with ``errors="skip"``.
  ``pickle``: ``uri`` is ``"<storage-url>#<key>"`` of a pickled list written by the driver, or of
  a step's output part (``options["framed"]``: framed lists of pairs); the whole object is the
  split; ``options["sha256"]``, when set, must match its digest before anything is unpickled.
* **Errors** (``split.options["errors"]``). ``strict`` (default): an undecodable byte, a bad JSON
  line or a bad CSV line raises :class:`~mrkit.errors.InputError` naming the file, the byte offset
  and the record number (0-based within the split, like :attr:`RecordBatch.first`). ``replace``:
  undecodable bytes become U+FFFD and the record is counted in ``replaced`` (bad JSON/CSV still
  raises). ``skip``: the record is dropped and counted in ``skipped``.
* **Encoding** (``split.options["encoding"]``, default utf-8) must be ASCII-compatible. With
  utf-8, a byte order mark (``EF BB BF``) at the very start of a file (or of its uncompressed
  stream) is dropped, for every format and source; anywhere else U+FEFF is data.
* **Compression** ``gz``, ``bz2``, ``xz`` through the standard library, ``zst`` through the optional
  ``zstandard`` package (imported only when a ``.zst`` split is read; extra ``zstd``). Offsets are
  then in the uncompressed stream and messages say so.
* **Sources.** Local paths are read with plain unbuffered files; ``storage-url#key`` objects with
  ranged :meth:`~mrkit.storage.Storage.open_read` calls, streamed, never whole (except ``pickle``).

Speed: the reader fills one reused buffer with 4 MiB reads, decodes each block of
complete lines once and cuts it with ``str.split("\\n")``; the partial last line moves to the
front of the buffer. Per record there is no framework code for ``text`` (one step for ``jsonl``).
Byte offsets of records are computed only when :meth:`RecordBatch.locate` is called, by re-reading.

Size (STYLE 3): about 600 lines, because the block reader, the four formats and the sources share
one error model (which failures are bad input, which are a storage hiccup to retry). If it grows,
the sources (``Stream``, ``RangedObject``, ``StorageFile``, decompressors) move to ``sources.py``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import pickle
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from mrkit.data.output import read_pairs
from mrkit.data.sources import (
    BLOCK_SIZE,
    READ_ERRORS,
    RangedObject,
    StorageFailed,
    StorageFile,
    Stream,
    close_all,
    decompressor,
    skip_lines,
)
from mrkit.errors import ConfigError, InputError
from mrkit.model.task import InputSplit
from mrkit.storage import open_storage

PICKLE_BATCH = 65536  # records per batch for pickled inputs
READ_FORMATS = ("text", "jsonl", "csv", "pickle")
COMPRESSIONS = ("", "gz", "bz2", "xz", "zst")
ERRORS = ("strict", "replace", "skip")

_BOM = b"\xef\xbb\xbf"  # the UTF-8 byte order mark
_CONTINUE = 1 << 16  # read size past the split's end, while finishing its last line


class RecordBatch:
    """A list of consecutive records of one split, and how to say where each came from.

    Attributes:
        records: the records (``str``, JSON values, or lists of ``str`` for CSV).
        first: the record number, within the split and 0-based, of ``records[0]``.
    """

    __slots__ = ("records", "first", "_reader", "_offset", "_gaps")

    def __init__(
        self, records: list[Any], first: int, reader: SplitReader, offset: int, gaps: Sequence[int]
    ) -> None:
        self.records = records
        self.first = first
        self._reader = reader
        self._offset = offset  # byte offset (uncompressed) of the batch's first line
        self._gaps = gaps  # sorted line indices, within the batch, that produced no record

    def __len__(self) -> int:
        return len(self.records)

    def locate(self, i: int) -> str:
        """Where ``records[i]`` came from: ``/d/a.txt bytes 0-1048576, record 17 (byte 1234)``.

        The byte offset is found by re-reading the input, so this is slow; call it on errors only.
        When the input cannot be re-read the byte offset is left out.
        """
        return self._reader._locate(self._offset, _raw_index(i, self._gaps), self.first + i)


def check_encoding(encoding: str) -> None:
    """Refuse an encoding whose bytes are not ASCII where ASCII is (lines are found at ``b"\\n"``).

    utf-8, utf-8-sig, latin-1, cp1252... pass; utf-16, utf-32 and EBCDIC code pages do not.

    Raises:
        ConfigError: naming the encoding and the fix.
    """
    probe = '\n\r,"{}az09 \t'
    try:
        compatible = probe.encode("ascii").decode(encoding) == probe
    except LookupError:
        raise ConfigError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError:
        compatible = False
    if not compatible:
        raise ConfigError(
            f"encoding {encoding!r} is not ASCII-compatible; splits are cut and lines found at b'\\n', so "
            "use utf-8, latin-1 or another ASCII superset (re-encode utf-16 or utf-32 input first)"
        )


def open_split(split: InputSplit, *, block_size: int = BLOCK_SIZE) -> SplitReader:
    """Open ``split`` for reading (nothing is read until iteration starts).

    Args:
        split: the split; its ``options`` may hold ``errors``, ``encoding`` and (pickle) ``sha256``.
        block_size: bytes per read (tests use tiny ones; lines longer than this still work).

    Returns:
        A :class:`SplitReader`.

    Raises:
        ConfigError: for an unknown format, compression, ``errors`` value or encoding.
    """
    return SplitReader(split, block_size=block_size)


class SplitReader:
    """Iterates the records of one split; see the module docstring for the contract.

    Attributes:
        split: the split being read.
        records_read: records produced so far.
        bytes_read: uncompressed bytes of the lines owned by this split consumed so far.
        skipped: records dropped by ``errors="skip"``.
        replaced: records decoded with replacement characters under ``errors="replace"``.
    """

    def __init__(self, split: InputSplit, *, block_size: int = BLOCK_SIZE) -> None:
        if split.format not in READ_FORMATS:
            raise ConfigError(f"split format must be one of {', '.join(READ_FORMATS)}, not {split.format!r}")
        if split.compression not in COMPRESSIONS:
            choices = ", ".join(repr(c) for c in COMPRESSIONS)
            raise ConfigError(f"split compression must be one of {choices}, not {split.compression!r}")
        self._errors: str = split.options.get("errors", "strict")
        if self._errors not in ERRORS:
            raise ConfigError(f"errors must be one of {', '.join(ERRORS)}, not {self._errors!r}")
        self._encoding: str = split.options.get("encoding", "utf-8")
        check_encoding(self._encoding)
        self._strip_bom = codecs.lookup(self._encoding).name in ("utf-8", "utf-8-sig")
        if block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, not {block_size!r}")
        self.split = split
        self.block_size = block_size
        self.records_read = 0
        self.bytes_read = 0
        self.skipped = 0
        self.replaced = 0
        # "storage-url#key" objects vs local paths; a local path may contain '#' but not '://'.
        self._url, self._key = split.uri.partition("#")[::2] if "://" in split.uri else ("", "")
        if "://" in split.uri and not self._key:
            raise ConfigError(f"split uri {split.uri!r} names a storage URL but no '#key'")
        # Weak, so that dropping an iterator closes its file at once (generator finalisation).
        self._open_iterators: weakref.WeakSet[Iterator[Any]] = weakref.WeakSet()

    # -- public iteration -----------------------------------------------------------------------

    def batches(self) -> Iterator[RecordBatch]:
        """Iterate the split's records in batches (one per block read).

        Raises:
            InputError: when the input is missing, unreadable, corrupt, or (``errors="strict"``)
                holds an undecodable byte or a malformed JSON/CSV line.
            MissingExtra: for ``.zst`` input without the ``zstandard`` package.
        """
        it = self._pickle_batches() if self.split.format == "pickle" else self._line_batches()
        self._open_iterators.add(it)
        return it

    def records(self) -> Iterator[Any]:
        """Iterate the split's records one by one (same errors as :meth:`batches`)."""
        return itertools.chain.from_iterable(batch.records for batch in self.batches())

    def close(self) -> None:
        """Stop every iteration started by this reader and close its files."""
        for it in list(self._open_iterators):
            it.close()  # type: ignore[attr-defined]
        self._open_iterators.clear()

    def __enter__(self) -> SplitReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- line formats ---------------------------------------------------------------------------

    def _line_batches(self) -> Iterator[RecordBatch]:
        split = self.split
        if split.length == 0:
            return
        end = None if split.length < 0 else split.start + split.length
        pos = max(split.start - 1, 0)
        parse = {"text": None, "jsonl": self._parse_jsonl, "csv": self._parse_csv}[split.format]
        first = 0
        stream = self._open_stream(pos)
        try:
            for off, chunk in _line_chunks(stream, pos, split.start, end, self.block_size):
                self.bytes_read += len(chunk)
                if off == 0 and self._strip_bom and chunk[:3] == _BOM:
                    # A UTF-8 byte order mark starts the file (Windows tools write one): it is not
                    # part of the first record. Only there: U+FEFF elsewhere is data.
                    off, chunk = 3, chunk[3:]
                    if not chunk:
                        continue
                records, gaps = self._decode(off, chunk, first)
                if parse is not None:
                    records, gaps = parse(off, chunk, records, gaps, first)
                self.records_read += len(records)
                del chunk  # the buffer is reused as soon as the next block is read
                yield RecordBatch(records, first, self, off, gaps)
                first += len(records)
        except StorageFailed as exc:
            raise exc.error from None
        except READ_ERRORS as exc:
            raise InputError(
                f"cannot read {self._where()}: {exc}; the input may be truncated or corrupt"
            ) from exc
        finally:
            stream.close()

    def _decode(self, off: int, chunk: memoryview, first: int) -> tuple[list[str], Sequence[int]]:
        """Decode a block of whole lines and cut it into lines; the slow path only on bad bytes."""
        try:
            text = str(chunk, self._encoding)
        except UnicodeDecodeError as exc:
            return self._decode_lenient(off, bytes(chunk), first, exc)
        return _split_lines(text), ()

    def _decode_lenient(
        self, off: int, raw: bytes, first: int, exc: UnicodeDecodeError
    ) -> tuple[list[str], list[int]]:
        enc, view = self._encoding, memoryview(raw)
        if self._errors == "strict":
            bad = exc.start
            record = first + raw.count(b"\n", 0, bad)
            raise InputError(
                f"cannot decode {self.split.uri} at {self._byte_label(off + bad)} (record {record} of split "
                f"{self.split.index}): {exc.encoding!r} codec can't decode byte 0x{raw[bad]:02x}: "
                f"{exc.reason}; pass errors='replace' or errors='skip'"
            ) from None
        lines: list[str] = []
        gaps: list[int] = []
        pos = 0
        # Decode the good run before each bad line in one call, handle the bad line alone, go on.
        while True:
            bad = pos + exc.start
            line_start = max(raw.rfind(b"\n", pos, bad) + 1, pos)
            line_end = raw.find(b"\n", bad)
            line_end = len(raw) if line_end < 0 else line_end
            if line_start > pos:
                lines += _split_lines(str(view[pos:line_start], enc))
            if self._errors == "skip":
                gaps.append(len(lines) + len(gaps))
                self.skipped += 1
            else:
                line = str(view[line_start:line_end], enc, "replace")
                lines.append(line[:-1] if line_end < len(raw) and line.endswith("\r") else line)
                self.replaced += 1
            pos = line_end + 1
            if pos >= len(raw):
                return lines, gaps
            try:
                rest = str(view[pos:], enc)
            except UnicodeDecodeError as again:
                exc = again
                continue
            lines += _split_lines(rest)
            return lines, gaps

    def _parse_jsonl(
        self, off: int, chunk: memoryview, lines: list[str], gaps: Sequence[int], first: int
    ) -> tuple[list[Any], Sequence[int]]:
        loads = json.loads
        try:
            return [loads(line) for line in lines], gaps
        except (ValueError, RecursionError):
            pass  # a blank or bad line somewhere in the block: redo it line by line
        out: list[Any] = []
        dropped: list[int] = []
        for j, line in enumerate(lines):
            try:
                out.append(loads(line))
            except (ValueError, RecursionError) as exc:
                if not line.strip():
                    dropped.append(j)  # blank lines are not records, and not errors
                    continue
                if self._errors == "skip":
                    dropped.append(j)
                    self.skipped += 1
                    continue
                byte = off + _line_start(chunk, _raw_index(j, gaps))
                raise InputError(
                    f"invalid JSON in {self._where()}, record {first + len(out)} "
                    f"({self._byte_label(byte)}): {exc}"
                ) from None
        return out, _merge_gaps(gaps, dropped)

    def _parse_csv(
        self, off: int, chunk: memoryview, lines: list[str], gaps: Sequence[int], first: int
    ) -> tuple[list[Any], Sequence[int]]:
        # The trailing "" sentinel must come back as its own empty row; if a line opened a quote
        # it does not, whichever line it was (so the outcome never depends on where blocks end).
        lines.append("")
        try:
            rows = list(csv.reader(lines))
        except csv.Error:
            rows = []
        lines.pop()
        if len(rows) == len(lines) + 1:
            rows.pop()
            return rows, gaps
        # Some line opened a quote it did not close: find which, parsing each line alone.
        out: list[Any] = []
        dropped: list[int] = []
        for j, line in enumerate(lines):
            try:
                alone = list(csv.reader((line, "")))
                problem = "" if len(alone) == 2 else "a quoted field spans a line break"
            except csv.Error as exc:
                problem = str(exc)
            if not problem:
                out.append(alone[0])
            elif self._errors == "skip":
                dropped.append(j)
                self.skipped += 1
            else:
                byte = off + _line_start(chunk, _raw_index(j, gaps))
                raise InputError(
                    f"bad CSV in {self._where()}, record {first + len(out)} ({self._byte_label(byte)}): "
                    f"{problem}; mrkit reads one CSV record per line (quoted line breaks are not supported)"
                )
        return out, _merge_gaps(gaps, dropped)

    # -- pickled record lists -------------------------------------------------------------------

    def _pickle_batches(self) -> Iterator[RecordBatch]:
        uri = self.split.uri
        storage = open_storage(self._url)
        try:
            data = storage.get(self._key)
        except FileNotFoundError:
            raise InputError(f"pickled input {uri} of split {self.split.index} does not exist") from None
        finally:
            storage.close()
        expected = self.split.options.get("sha256")
        if expected:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise InputError(
                    f"refusing to unpickle {uri}: its SHA-256 is {actual}, not the expected {expected}"
                )
        try:
            framed = self.split.options.get("framed")  # a step's output part: framed lists of pairs
            records = list(read_pairs(io.BytesIO(data), "pickle")) if framed else pickle.loads(data)
        except Exception as exc:  # unpickling can raise anything (missing class, bad opcode...)
            raise InputError(f"cannot unpickle the records of {uri}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(records, list):
            raise InputError(f"pickled input {uri} holds a {type(records).__name__}, not a list of records")
        self.bytes_read += len(data)
        for first in range(0, len(records), PICKLE_BATCH):
            batch = records[first : first + PICKLE_BATCH]
            self.records_read += len(batch)
            yield RecordBatch(batch, first, self, 0, ())

    # -- sources --------------------------------------------------------------------------------

    def _open_stream(self, pos: int) -> Stream:
        """A stream of the split's uncompressed bytes from offset ``pos``.

        Raises:
            InputError: when the file or object is missing or cannot be opened.
        """
        split = self.split
        closers: list[Any] = []
        opened = False  # past opening: errors now come from reading (or decompressing) the data
        try:
            if not self._url:
                raw: Any = open(split.uri, "rb", buffering=0)  # noqa: SIM115 - closed by Stream
                closers.append(raw)
                if not split.compression:
                    raw.seek(pos)
                    return Stream(raw, closers)
            else:
                storage = open_storage(self._url)
                closers.append(storage)
                if not split.compression:
                    end = None if split.length < 0 else split.start + split.length
                    return Stream(RangedObject(storage, self._key, pos, end), closers)
                raw = StorageFile(storage.open_read(self._key))
                closers.append(raw)
            opened = True
            stream = Stream(decompressor(split.compression, raw), closers)
            closers = stream._closers
            stream.discard(pos)  # a compressed stream can only be entered from its beginning
            return stream
        except FileNotFoundError:
            close_all(closers)
            raise InputError(f"input {split.uri} of split {split.index} does not exist") from None
        except StorageFailed as exc:
            close_all(closers)
            raise exc.error from None
        except READ_ERRORS as exc:
            close_all(closers)
            if self._url and not opened:
                raise  # the storage backend failed, perhaps for a moment: let the runtime retry
            raise InputError(f"cannot open {self._where()}: {exc}") from exc
        except BaseException:
            close_all(closers)
            raise

    def _locate(self, offset: int, line_index: int, record: int) -> str:
        where = f"{self._where()}, record {record}"
        if self.split.format == "pickle":
            return where
        try:
            with self._open_stream(offset) as stream:
                byte = offset + skip_lines(stream, line_index)
        except (InputError, StorageFailed, *READ_ERRORS):
            return where
        return f"{where} ({self._byte_label(byte)})"

    def _where(self) -> str:
        return self.split.describe()

    def _byte_label(self, byte: int) -> str:
        return f"byte {byte} of the uncompressed stream" if self.split.compression else f"byte {byte}"


# -- the block reader -------------------------------------------------------------------------


def _line_chunks(
    stream: Stream, pos: int, start: int, end: int | None, block_size: int
) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(offset, view)``: runs of whole lines whose first bytes lie in ``[start, end)``.

    ``stream`` delivers bytes from offset ``pos <= max(start - 1, 0)``. Each view is a slice of one
    reused buffer, valid until the next item is requested. A run ends with ``b"\\n"`` except the
    last run of a file that does not. Lines longer than the buffer grow it (doubling).
    """
    cap = block_size if end is None else max(1, min(block_size, end - pos + _CONTINUE))
    buf = bytearray(cap)
    view = memoryview(buf)
    base = pos  # offset of buf[0]
    lo = hi = 0  # live bytes are buf[lo:hi]
    scanned = 0  # buf[lo:scanned] is known to hold no newline we want (long lines are not rescanned)
    aligned = start == 0  # True once buf[lo] is the first byte of a line this split owns
    eof = False
    while True:
        if hi == cap:  # make room: drop consumed bytes, or grow for a line longer than the buffer
            if lo > 0 or not aligned:
                keep = hi - lo if aligned else 0
                buf[:keep] = bytes(view[lo:hi]) if aligned else b""
                base, scanned, lo, hi = base + hi - keep, max(scanned - lo, 0) if aligned else 0, 0, keep
            else:
                cap *= 2
                grown = bytearray(cap)
                grown[:hi] = view[:hi]
                buf, view = grown, memoryview(grown)
        room = cap - hi
        if end is not None:  # read up to the split's end, then in small steps to finish its last line
            left = end - (base + hi)
            room = min(room, left if left > 0 else _CONTINUE)
        target = hi + room
        while hi < target:
            n = stream.readinto(view[hi:target])
            if not n:
                eof = True
                break
            hi += n
        if not aligned:  # skip the line that started before `start`: it belongs to the previous split
            i = buf.find(b"\n", max(start - 1 - base, scanned, lo), hi)
            if i < 0:
                # No newline in [start-1, end-1): no line starts in this split (it sits inside one long
                # line); stop here rather than read on to that line's end.
                if eof or (end is not None and base + hi >= end - 1):
                    return
                lo = scanned = hi
                continue
            lo = scanned = i + 1
            aligned = True
        if end is not None and base + lo >= end:
            return
        if end is not None and base + hi >= end:  # the line holding byte end-1 is our last one
            j = buf.find(b"\n", max(end - 1 - base, scanned), hi)
            if j >= 0:
                yield base + lo, view[lo : j + 1]
                return
            if eof:
                if hi > lo:
                    yield base + lo, view[lo:hi]
                return
            scanned = hi
            continue
        if eof:
            if hi > lo:
                yield base + lo, view[lo:hi]
            return
        k = buf.rfind(b"\n", scanned, hi)
        if k < 0:
            scanned = hi
            continue
        yield base + lo, view[lo : k + 1]
        lo = scanned = k + 1


# -- small pure helpers -----------------------------------------------------------------------


def _split_lines(text: str) -> list[str]:
    """Cut decoded whole lines at ``"\\n"`` only, dropping the ``"\\r"`` of ``"\\r\\n"``.

    >>> _split_lines("a\\r\\nb\\x0bc\\n\\nd\\r")
    ['a', 'b\\x0bc', '', 'd\\r']
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if not lines[-1]:
        lines.pop()  # the block ended with "\n": no line follows it
    return lines


def _raw_index(i: int, gaps: Sequence[int]) -> int:
    """Line index, within a block, of the ``i``-th record, given the (sorted) lines that gave none.

    >>> _raw_index(2, [0, 2])
    4
    """
    for gap in gaps:
        if gap > i:
            break
        i += 1
    return i


def _merge_gaps(outer: Sequence[int], inner: Sequence[int]) -> list[int]:
    """Combine lines dropped by decoding (``outer``, block line indices) with lines then dropped by
    parsing (``inner``, indices among the survivors) into block line indices, in one pass.

    >>> _merge_gaps([1], [0, 1])
    [0, 1, 2]
    """
    merged: list[int] = []
    k = 0
    for j in inner:
        while k < len(outer) and outer[k] <= j + k:
            merged.append(outer[k])
            k += 1
        merged.append(j + k)
    merged.extend(outer[k:])
    return merged


def _line_start(chunk: memoryview, line_index: int) -> int:
    """Offset within ``chunk`` where its ``line_index``-th line starts."""
    data = bytes(chunk)
    pos = 0
    for _ in range(line_index):
        pos = data.index(b"\n", pos) + 1
    return pos


__all__ = ["BLOCK_SIZE", "RecordBatch", "SplitReader", "check_encoding", "open_split"]
