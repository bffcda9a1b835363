"""Planning: turn the user's inputs into map-task splits (byte ranges cut anywhere).

:func:`plan_splits` expands paths, globs, folders and storage URLs into a sorted list of files, then
cuts them into about ``n_map`` byte ranges of similar size. Cuts fall on arbitrary bytes, not on
line boundaries: a split owns every line that *starts* in ``[start, start + length)`` (the reader
skips the partial line at its start and finishes the line that straddles its end), so each line is
read exactly once whatever the cut points, and planning never has to read the data.

About 480 lines: the planner, the input expansion it needs (local paths, globs, folders and
storage URLs) and the packing of small splits into tasks belong together; the readers of those
splits are :mod:`mrkit.data.readers`.

What an input may be:

    data/a.txt                   one file (never filtered, even when its name starts with ``_``)
    data/*.txt, data/**/*.gz     a glob (``*``, ``?``, ``[...]``; ``**`` matches folders recursively)
    data/                        a folder: every regular file inside, recursively
    memory://store/dir/*.txt     a storage URL (``scheme://netloc/key-or-glob``), listed through
    s3://bucket/prefix/          :meth:`mrkit.storage.Storage.list`, same rules as local paths

Like Hadoop, files and folders whose names start with ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are
skipped inside folders and by wildcards, unless the pattern segment that matches them starts with
the same character (``out/_*`` does list ``_SUCCESS``). Storage keys are matched segment by segment
with :func:`fnmatch.fnmatchcase`, so ``*`` never crosses a ``/`` there either.

The same file named twice is read once. Empty files are dropped (a split never has zero bytes);
compressed files (``.gz .bz2 .xz .zst``) are never cut and become one split with ``length=-1``.
Local files come back as absolute paths, objects as ``"<storage-url>#<key>"``.
"""

from __future__ import annotations

import fnmatch
import heapq
import os
from collections.abc import Iterator, Sequence
from typing import Union

from mrkit.data.readers import check_encoding
from mrkit.errors import ConfigError, InputError
from mrkit.model.task import InputSplit
from mrkit.storage import open_storage

InputPath = Union[str, "os.PathLike[str]"]

# Compression suffix -> InputSplit.compression; a compressed stream cannot be entered mid-way.
COMPRESSION_SUFFIXES: dict[str, str] = {".gz": "gz", ".bz2": "bz2", ".xz": "xz", ".zst": "zst"}
# Extension (after removing a compression suffix) -> format, for format="auto".
FORMAT_SUFFIXES: dict[str, str] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
FORMATS = ("auto", "text", "jsonl", "csv")
ERRORS = ("strict", "replace", "skip")

_GLOB_CHARS = frozenset("*?[")


DEFAULT_SPLIT_CAP = 16 << 20  # bytes: the largest split of a default plan (see plan_splits)


def plan_splits(
    inputs: InputPath | Sequence[InputPath],
    n_map: int | None,
    *,
    format: str = "auto",
    errors: str = "strict",
    encoding: str = "utf-8",
    min_split_bytes: int = 1 << 20,
    split_size: int | None = None,
) -> list[InputSplit]:
    """Expand ``inputs`` and cut them into about ``n_map`` splits of similar size.

    Every non-empty file gets at least one split, so there are never fewer splits than files.
    Beyond that, the file with the largest pieces is re-cut into one more equal piece, repeatedly,
    until there are ``n_map`` splits or no file can be cut without pieces below ``min_split_bytes``.
    Compressed files are never cut. The result is ordered by input (in the order given), then by
    sorted path, then by offset, and numbered by ``index``.

    Args:
        inputs: a path, glob, folder or storage URL, or a list of them (see the module docstring).
        n_map: the number of splits wanted, or None for ``max(number of files, 2 * CPU count,
            the pieces of 16 MiB the files make)`` (:data:`DEFAULT_SPLIT_CAP`: 32 files of 31 MB
            make 64 splits, so that a task's memory stays bounded whatever the files' sizes);
            either way bounded by ``total bytes // min_split_bytes`` (a small file stays whole).
            The job's plan may then pack small splits into fewer map tasks (:func:`pack_splits`).
        format: ``auto`` (from the extension: ``.jsonl``/``.ndjson`` -> jsonl, ``.csv`` -> csv,
            anything else -> text, after removing a compression suffix), ``text``, ``jsonl``, ``csv``.
        errors: what readers do with an undecodable or malformed record: ``strict`` (raise),
            ``replace`` (decode with U+FFFD) or ``skip`` (drop and count it).
        encoding: the text encoding; must be ASCII-compatible (``"\\n"`` is one byte ``0x0a``),
            because splits are cut and lines found on bytes.
        min_split_bytes: never cut a file into pieces smaller than this (1 MiB by default).
        split_size: instead of ``n_map``, cut every uncompressed local file into pieces of about
            this many bytes, each ending at a line end (so ``1`` gives one line per split); files
            named by a storage URL are cut into equal pieces of about this size.

    Returns:
        The splits, ``index`` 0, 1, 2, ...; empty when every input file is empty.

    Raises:
        ConfigError: for a bad ``format``, ``errors``, ``encoding``, ``n_map`` or ``min_split_bytes``.
        InputError: when a file is missing or unreadable, a glob matches nothing or a folder holds
            no file.
    """
    _check_options(format, errors, encoding)
    if n_map is not None and (not isinstance(n_map, int) or isinstance(n_map, bool) or n_map < 1):
        raise ConfigError(f"n_map must be a positive integer or None, not {n_map!r}")
    if not isinstance(min_split_bytes, int) or min_split_bytes < 1:
        raise ConfigError(f"min_split_bytes must be a positive integer, not {min_split_bytes!r}")

    if split_size is not None and (
        not isinstance(split_size, int) or isinstance(split_size, bool) or split_size < 1
    ):
        raise ConfigError(f"split_size must be a positive number of bytes or None, not {split_size!r}")
    files = [f for f in expand_inputs(inputs) if f[1] > 0]
    if split_size is not None:
        return _splits_of_size(files, split_size, format, {"errors": errors, "encoding": encoding})
    if n_map is None:
        # Enough splits for every core twice, and none over DEFAULT_SPLIT_CAP: a task's memory
        # follows its split (a mapper_split holds its split's words), so big files are cut.
        capped = sum(-(-size // DEFAULT_SPLIT_CAP) for _, size in files)  # pieces of every file
        n_map = max(len(files), 2 * (os.cpu_count() or 1), capped)
    options = {"errors": errors, "encoding": encoding}
    splits: list[InputSplit] = []
    compressions = [_compression(uri) for uri, _ in files]
    all_cuts = _allocate([size for _, size in files], compressions, n_map, min_split_bytes)
    for (uri, size), compression, cuts in zip(files, compressions, all_cuts, strict=True):
        fmt = _format_of(uri) if format == "auto" else format
        if compression:
            splits.append(InputSplit(uri, 0, -1, fmt, compression, len(splits), dict(options)))
            continue
        for i in range(cuts):
            start, stop = i * size // cuts, (i + 1) * size // cuts
            splits.append(InputSplit(uri, start, stop - start, fmt, "", len(splits), dict(options)))
    return splits


def expand_inputs(inputs: InputPath | Sequence[InputPath]) -> list[tuple[str, int]]:
    """Expand paths, globs, folders and storage URLs into ``(uri, size)`` pairs.

    Local files come back as absolute paths; storage objects as ``"<storage-url>#<key>"`` (the
    form :func:`mrkit.data.readers.open_split` reads). Each input's files are sorted; inputs keep
    the order given; a file named twice is kept once, at its first place.

    Raises:
        InputError: for a missing or unreadable file, a glob matching nothing, an empty folder.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    for item in inputs:
        text = os.fspath(item)
        if not isinstance(text, str):
            raise ConfigError(f"input paths must be str or os.PathLike of str, not {item!r}")
        if text.startswith("file://"):
            text = text[len("file://") :]
        found = _expand_url(text) if "://" in text else _expand_local(text)
        for uri, size in found:
            if uri not in seen:
                seen.add(uri)
                out.append((uri, size))
    return out


# -- local files and storage URLs -------------------------------------------------------------


def _expand_local(pattern: str) -> list[tuple[str, int]]:
    if _has_glob(pattern):
        base, segments = _split_pattern(pattern.replace(os.sep, "/"))
        paths: list[str] = []
        for match in _glob_local(base or ".", segments):
            if os.path.isdir(match):
                paths.extend(_walk(match))
            elif os.path.isfile(match):
                paths.append(match)
        if not paths:
            raise InputError(f"input glob {pattern!r} matches no file")
        return [_stat_local(p) for p in sorted(set(paths))]
    if os.path.isdir(pattern):
        paths = _walk(pattern)
        if not paths:
            raise InputError(
                f"input folder {pattern!r} holds no file (names starting with '.' or '_' are skipped)"
            )
        return [_stat_local(p) for p in paths]
    if not os.path.lexists(pattern):
        raise InputError(f"input file {pattern!r} does not exist")
    if not os.path.isfile(pattern):
        raise InputError(f"input {pattern!r} is neither a regular file nor a folder (or is a broken link)")
    return [_stat_local(pattern)]


def _glob_local(base: str, segments: list[str]) -> Iterator[str]:
    """Paths under ``base`` matching ``segments`` (see :func:`_match_segments` for the rules)."""
    if not segments:
        yield base
        return
    seg, rest = segments[0], segments[1:]
    if not _has_glob(seg) and seg != "**":
        path = os.path.join(base, seg)
        if os.path.lexists(path):
            yield from _glob_local(path, rest)
        return
    try:
        names = sorted(os.listdir(base))
    except (NotADirectoryError, FileNotFoundError):
        return
    if seg == "**":
        yield from _glob_local(base, rest)  # `**` may match no folder at all
        for name in names:
            path = os.path.join(base, name)
            if _visible(name, seg) and os.path.isdir(path):
                yield from _glob_local(path, segments)
        return
    for name in names:
        if fnmatch.fnmatchcase(name, seg) and _visible(name, seg):
            yield from _glob_local(os.path.join(base, name), rest)


def _walk(folder: str) -> list[str]:
    """Every regular file under ``folder``, sorted, skipping names that start with ``.`` or ``_``."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        found.extend(os.path.join(dirpath, f) for f in filenames if not _hidden(f))
    return sorted(f for f in found if os.path.isfile(f))


def _stat_local(path: str) -> tuple[str, int]:
    path = os.path.abspath(path)
    try:
        # Opening (not os.access) is the honest readability test: it respects ACLs and root's rights.
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise InputError(f"input file {path!r} does not exist") from None
    except OSError as exc:
        raise InputError(f"input file {path!r} cannot be read: {exc.strerror or exc}") from None
    return path, size


def _expand_url(url: str) -> list[tuple[str, int]]:
    scheme, rest = url.split("://", 1)
    netloc, _, path = rest.partition("/")
    storage = open_storage(f"{scheme}://{netloc}")
    try:
        if _has_glob(path):
            literal, segments = _split_pattern(path)
            prefix = f"{literal}/" if literal else ""
            # list() takes a plain prefix: list everything under the literal folders, match here.
            keys = [k for k in storage.list(prefix) if _match_segments(segments, k[len(prefix) :].split("/"))]
            if not keys:
                raise InputError(f"input glob {url!r} matches no object")
        elif path and not path.endswith("/") and storage.exists(path):
            keys = [path]
        else:
            folder = path.rstrip("/") + "/" if path.rstrip("/") else ""
            keys = [
                k for k in storage.list(folder) if not any(_hidden(s) for s in k[len(folder) :].split("/"))
            ]
            if not keys:
                raise InputError(f"input {url!r} is neither an object nor a folder holding objects")
        return [(f"{storage.url}#{k}", storage.size(k)) for k in sorted(keys)]
    finally:
        storage.close()


def _split_pattern(pattern: str) -> tuple[str, list[str]]:
    """Split a ``/`` pattern into its literal leading folders and the segments from the first wildcard.

    >>> _split_pattern("data/2024/*/x?.txt")
    ('data/2024', ['*', 'x?.txt'])
    >>> _split_pattern("/d/**/*.gz")
    ('/d', ['**', '*.gz'])
    """
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if _has_glob(part))
    base = "/".join(parts[:first])
    return (base or ("/" if pattern.startswith("/") else "")), [p for p in parts[first:] if p]


def _match_segments(pattern: Sequence[str], key: Sequence[str]) -> bool:
    """Glob-match a key's ``/`` segments the way local globs match folders.

    ``*``, ``?`` and ``[...]`` stay within a segment; a ``**`` segment spans any number of them; a
    key that continues below a fully matched pattern is a file inside a matched folder. Names that
    start with ``.`` or ``_`` only match a pattern segment that starts with the same character.

    >>> _match_segments(["*.txt"], ["a.txt"]), _match_segments(["*.txt"], ["sub", "a.txt"])
    (True, False)
    >>> _match_segments(["**", "*.txt"], ["x", "y", "a.txt"]), _match_segments(["*"], ["_SUCCESS"])
    (True, False)
    """
    if not pattern:
        return all(not _hidden(s) for s in key)  # inside a matched folder
    if not key:
        return False
    if pattern[0] == "**":
        if _match_segments(pattern[1:], key):
            return True
        return len(key) > 1 and _visible(key[0], "**") and _match_segments(pattern, key[1:])
    return (
        fnmatch.fnmatchcase(key[0], pattern[0])
        and (_visible(key[0], pattern[0]) or not _has_glob(pattern[0]))
        and _match_segments(pattern[1:], key[1:])
    )


# -- split planning ---------------------------------------------------------------------------


def _splits_of_size(
    files: list[tuple[str, int]], split_size: int, format: str, options: dict[str, str]
) -> list[InputSplit]:
    """Cut each file into pieces of at least ``split_size`` bytes that end at a line end."""
    splits: list[InputSplit] = []
    for uri, size in files:
        fmt = _format_of(uri) if format == "auto" else format
        compression = _compression(uri)
        if compression:
            splits.append(InputSplit(uri, 0, -1, fmt, compression, len(splits), dict(options)))
            continue
        for start, stop in _line_cuts(uri, size, split_size):
            splits.append(InputSplit(uri, start, stop - start, fmt, "", len(splits), dict(options)))
    return splits


def _line_cuts(uri: str, size: int, split_size: int) -> Iterator[tuple[int, int]]:
    if "://" in uri:  # no cheap seek: equal pieces (readers still give each line to one split)
        pieces = max(1, -(-size // split_size))
        for i in range(pieces):
            yield i * size // pieces, (i + 1) * size // pieces
        return
    with open(uri, "rb") as f:
        start = 0
        while start < size:
            target = start + split_size
            stop = size
            if target < size:
                f.seek(target - 1)  # the piece ends with the line holding byte target - 1
                line = f.readline()
                stop = min(size, target - 1 + len(line))
            yield start, stop
            start = stop


def _allocate(sizes: Sequence[int], compressions: Sequence[str], n_map: int, min_bytes: int) -> list[int]:
    """How many pieces to cut each file into: one each, then re-cut the largest piece while allowed.

    Minimising the largest piece gives map tasks of similar length; the heap holds
    ``(-piece size, file)`` for every file that may still be cut.

    >>> _allocate([100, 40, 10], ["", "", ""], 5, 1)
    [3, 1, 1]
    >>> _allocate([100], [""], 8, 30)
    [3]
    """
    cuts = [1] * len(sizes)
    heap = [(-size, i) for i, size in enumerate(sizes) if not compressions[i]]
    heapq.heapify(heap)
    total = len(sizes)
    while total < n_map and heap:
        _, i = heapq.heappop(heap)
        if sizes[i] // (cuts[i] + 1) < min_bytes:
            continue  # this file cannot be cut finer; smaller pieces elsewhere still may be
        cuts[i] += 1
        total += 1
        heapq.heappush(heap, (-(sizes[i] // cuts[i]), i))
    return cuts


# -- names and options ------------------------------------------------------------------------


def _check_options(format: str, errors: str, encoding: str) -> None:
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if errors not in ERRORS:
        raise ConfigError(f"errors must be one of {', '.join(ERRORS)}, not {errors!r}")
    check_encoding(encoding)


def _compression(uri: str) -> str:
    return COMPRESSION_SUFFIXES.get(os.path.splitext(_name(uri))[1].lower(), "")


def pack_splits(
    splits: Sequence[InputSplit], parallelism: int, cap: int = DEFAULT_SPLIT_CAP
) -> list[tuple[InputSplit, ...]]:
    """Group consecutive small splits into map tasks of about equal size, at most ``cap`` bytes each
    (Hadoop's ``CombineFileInputFormat``); the default plan of a job with a reduce phase uses it.

    Every map task costs more than its records: its output is sorted and spilled once, and the
    reduce side merges one entry per distinct key *per task*. A word count over 32 files of 3 MB
    shuffles 1.74 million entries as 32 tasks and 0.58 million as 8, and runs 10-15 % faster
    (benchmarks/README.md). Each input (the consecutive splits of one input mapper) is packed on
    its own: into tasks of 80 % of ``cap`` on average (so that equal shares fit under it), their
    count rounded up to a multiple of ``parallelism`` and at least ``2 * parallelism`` (a wave for
    every worker, and a second to even out their speeds), never more than there are splits; the
    splits are shared out in order by their bytes. A compressed or stored-records split (unknown
    or not file-backed size) is a task of its own.

    >>> s = [InputSplit(f"f{i}", 0, 3 << 20, "text", index=i) for i in range(32)]
    >>> [len(group) for group in pack_splits(s, 2)]
    [4, 4, 4, 4, 4, 4, 4, 4]
    >>> [len(group) for group in pack_splits(s[:3], 2)]
    [1, 1, 1]
    """
    groups: list[tuple[InputSplit, ...]] = []
    run: list[InputSplit] = []  # consecutive packable splits of one input mapper
    for split in splits:
        if run and split.mapper != run[0].mapper:
            groups += _pack_run(run, parallelism, cap)
            run = []
        if split.length >= 0 and not split.compression and split.format != "pickle":
            run.append(split)
        else:
            groups += _pack_run(run, parallelism, cap)
            run = []
            groups.append((split,))
    groups += _pack_run(run, parallelism, cap)
    return groups


def _pack_run(splits: list[InputSplit], parallelism: int, cap: int) -> list[tuple[InputSplit, ...]]:
    """Pack splits of one input, all of known size, into shares of about equal bytes (see above)."""
    if not splits:
        return []
    total = sum(s.length for s in splits)
    per = max(1, parallelism)
    at_least = -(-total * 5 // (4 * cap))
    target = total / max(2 * per, -(-at_least // per) * per)
    groups: list[tuple[InputSplit, ...]] = []
    group: list[InputSplit] = []
    size = slot = 0
    done = 0  # bytes of the splits before this one
    for split in splits:
        # The share a split belongs to is where its middle byte falls: equal shares, in order.
        its_slot = int((done + split.length / 2) // target) if target else 0
        done += split.length
        if group and (its_slot != slot or size + split.length > cap):
            groups.append(tuple(group))
            group, size = [], 0
        if not group:
            slot = its_slot
        group.append(split)
        size += split.length
    if group:
        groups.append(tuple(group))
    return groups


def _format_of(uri: str) -> str:
    root, ext = os.path.splitext(_name(uri))
    if ext.lower() in COMPRESSION_SUFFIXES:
        ext = os.path.splitext(root)[1]
    return FORMAT_SUFFIXES.get(ext.lower(), "text")


def _name(uri: str) -> str:
    """The file name of a local path or of a ``storage-url#key`` object."""
    if "://" in uri and "#" in uri:
        uri = uri.partition("#")[2]
    return uri.replace(os.sep, "/").rsplit("/", 1)[-1]


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _visible(name: str, pattern_segment: str) -> bool:
    """A hidden name is only matched by a pattern segment that starts with the same character."""
    return not _hidden(name) or pattern_segment.startswith(name[0])


def _has_glob(text: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(text)


__all__ = ["COMPRESSION_SUFFIXES", "ERRORS", "FORMATS", "expand_inputs", "pack_splits", "plan_splits"]
