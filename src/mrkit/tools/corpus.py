"""Deterministic synthetic inputs for the demo, the tests and the benchmarks.

Two generators, both pure functions of their arguments:

``generate_text(folder, size_mb=, files=, seed=)``
    English-like text: lines of words drawn from a Zipf-distributed vocabulary of about 80,000
    distinct words (a hundred real English function words at the head, then syllable combinations,
    a few with apostrophes, some numbers, some capitalised proper nouns), with punctuation,
    capitalised line starts, line lengths from 0 to about 200 characters and some empty lines.
``generate_uservisits(path_or_folder, size_mb=, files=, seed=)``
    CSV rows (no header) in the uservisits schema of the Pavlo et al. benchmark used by seed 001:
    ``sourceIP,destURL,visitDate,adRevenue,userAgent,countryCode,languageCode,searchWord,duration``.
    About 2,600 distinct destURLs per MB of output (260k per 100 MB), with Zipf-like popularity.
    No field contains a comma, a quote or a newline, so ``line.split(",")`` parses a row.
``generate_rankings(path_or_folder, uservisits_mb=, files=, seed=)``
    The benchmark's other table, ``pageURL,pageRank,avgDuration``: one row per destURL of the
    uservisits generated with the same ``seed`` and ``size_mb`` (so a join of the two matches every
    visit), with a page rank and an average duration drawn uniformly from 1..10,000 and 1..100.

The contract:

* **Byte-identical output** for the same arguments on any machine and any Python >= 3.10: the only
  randomness is ``random.Random(seed)``, used through ``random()`` and ``getrandbits()`` only (whose
  streams CPython keeps stable), never ``hash()``, never a library whose algorithm may change; numpy
  is not used even when installed, so a machine with numpy writes the same bytes as one without.
  Weights are built with ``+`` and ``/`` only (correctly rounded IEEE operations, no ``pow``).
* **Sizes**: 1 MB is 1,000,000 bytes; all output is ASCII; the total is within one line of
  ``size_mb`` (each file gets an equal share and ends with a newline).
* **Speed** (well over 50 MB/s on one core): per-token work is done once, for a pool of lines or
  row parts proportional to the output (capped); the files are assembled by choosing pool entries with
  the RNG, so the per-byte cost is a list lookup and a join.

Text lines are reused from the pool (each pool line appears about ``size_mb / 8`` times in a large
corpus); word frequencies still follow the vocabulary's Zipf law, which is what word-count style
jobs care about.

About 540 lines: the text, uservisits and rankings generators share the Zipf sampler and the
byte-identical output rules; it is a tool for the demo and the benchmarks, not used by jobs.
"""

from __future__ import annotations

import array
import functools
import itertools
import math
import os
import random
import sys
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import BinaryIO, TypeVar

from mrkit.errors import ConfigError

__all__ = ["generate_text", "generate_uservisits"]

MB = 1_000_000
T = TypeVar("T")

_VOCABULARY_SIZE = 80_000
_TABLE_BITS = 20  # Zipf sampling table of 2**20 cells: every one of the 80k words gets >= 1 cell

# The head of the vocabulary: real English function words, most frequent first.
_ENGLISH_HEAD = (
    "the of and to a in is it that was he for on are with as i his they be at one have this from "
    "or had by not word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause much "
    "mean before move right boy old too same tell does set three want air well also play small end "
    "put home read hand port large spell add even land here must big high such follow act why ask "
    "men change went light kind off need house picture try us again animal point mother world near "
    "build self earth father don't it's i'm can't you're that's"
).split()

# Syllables are onset + vowel + coda; "-" stands for nothing (written this way to keep the tables short).
_ONSETS = tuple(
    x.strip("-")
    for x in "- - b c d f g h j k l m n p r s t v w y z br ch cl cr dr fl fr gl gr pl pr sh sl sp st str th "
    "tr wh qu sc sn sw".split()
)
_VOWELS = tuple("a e i o u a e i o ea ee ai ou oo y ie oa".split())
_CODAS = tuple(x.strip("-") for x in "- - - n r s t l m nd st ng ck rd nt th sh ll x".split())

# Line endings and in-line punctuation around a word ("_"); see _text_pool.
_LINE_ENDINGS = tuple(x.strip("-") for x in '. . . . . . - - , ? ! ; : ." ... )'.split())
_WORD_VARIANTS = tuple(tuple(x.split("_")) for x in """_, _, _, _; _: "_ _" (_) _- _' _!""".split())

_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML like Gecko) Chrome/96.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML like Gecko) Version/15.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:94.0) Gecko/20100101 Firefox/94.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 15_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 12; Pixel 6) AppleWebKit/537.36 Chrome/96.0 Mobile Safari/537.36",
    "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 5.1)",
    "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)",
    "Mozilla/5.0 (Windows; U; Windows NT 5.1; en-US; rv:1.8.1.6) Gecko/20070725 Firefox/2.0.0.6",
    "Opera/9.80 (Windows NT 6.1; U; en) Presto/2.2.15 Version/10.00",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Wget/1.20.3 (linux-gnu)",
    "curl/7.68.0",
    "Lynx/2.8.9rel.1 libwww-FM/2.14",
    "Mozilla/5.0 (iPad; CPU OS 9_3_5 like Mac OS X) AppleWebKit/601.1.46 Mobile/13G36",
    "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
)
# (countryCode, languageCode) pairs, the most common repeated to weight them.
_PLACES = tuple(
    tuple(x.split(":"))
    for x in "USA:en-US USA:en-US USA:en-US USA:es-US GBR:en-GB DEU:de-DE FRA:fr-FR JPN:ja-JP CHN:zh-CN "
    "IND:hi-IN IND:en-IN BRA:pt-BR CAN:en-CA CAN:fr-CA AUS:en-AU ITA:it-IT ESP:es-ES MEX:es-MX KOR:ko-KR "
    "RUS:ru-RU NLD:nl-NL SWE:sv-SE CHE:de-CH CHE:fr-CH POL:pl-PL BEL:nl-BE TUR:tr-TR ARG:es-AR ZAF:en-ZA "
    "NOR:nb-NO DNK:da-DK FIN:fi-FI IRL:en-IE PRT:pt-PT GRC:el-GR AUT:de-AT NZL:en-NZ SGP:en-SG ISR:he-IL "
    "EGY:ar-EG NGA:en-NG KEN:sw-KE IDN:id-ID THA:th-TH VNM:vi-VN PHL:fil-PH".split()
)
_TLDS = ("com", "com", "com", "com", "org", "net", "edu", "io", "co.uk", "de", "fr", "info", "gov")
_SECTIONS = ("", "news", "blog", "shop", "item", "wiki", "docs", "page", "forum", "tag", "user", "a")


# --------------------------------------------------------------------------------------------------
# Random helpers: stable streams, vectorised so the per-value cost is one list-comprehension step.


def _random_u32(rng: random.Random, n: int) -> array.array:
    """``n`` uniform 32-bit integers from one ``getrandbits`` call (stable across CPython versions)."""
    out = array.array("I")
    if n <= 0:
        return out
    if out.itemsize != 4:  # pragma: no cover - every mainstream platform has a 4-byte unsigned int
        out = array.array("L")
        if out.itemsize != 4:
            raise RuntimeError("mrkit.corpus needs a 4-byte array typecode")
    out.frombytes(rng.getrandbits(32 * n).to_bytes(4 * n, "little"))
    if sys.byteorder == "big":  # pragma: no cover - keep bytes identical on big-endian machines
        out.byteswap()
    return out


def _random_below(rng: random.Random, n: int, bound: int) -> list[int]:
    """``n`` integers in ``range(bound)`` (multiply-shift of 32-bit values; bias < bound / 2**32)."""
    return [(x * bound) >> 32 for x in _random_u32(rng, n)]


def _shuffled(rng: random.Random, items: Sequence[str]) -> list[str]:
    """A permutation of ``items`` ordered by random keys (no reliance on ``Random.shuffle``)."""
    keys = _random_u32(rng, len(items))
    order = sorted(range(len(items)), key=keys.__getitem__)
    return [items[i] for i in order]


def _zipf_table(items: Sequence[str], offset: float, bits: int = _TABLE_BITS) -> list[str]:
    """An inverse-CDF table: ``table[u]`` for uniform ``u`` in ``range(2**bits)`` is Zipf distributed.

    Item ``r`` (0-based rank) has weight ``1 / (r + offset)`` (Zipf-Mandelbrot with exponent 1). Each
    item gets ``round(cdf(r) * 2**bits) - round(cdf(r - 1) * 2**bits)`` cells; far-tail items whose share
    is under one cell may get none.
    """
    size = 1 << bits
    cumulative = itertools.accumulate(1.0 / (r + offset) for r in range(len(items)))
    scale = size / math.fsum(1.0 / (r + offset) for r in range(len(items)))
    bounds = [min(int(c * scale + 0.5), size) for c in cumulative]
    bounds[-1] = size
    counts = [b - a for a, b in itertools.pairwise([0, *bounds])]
    return list(itertools.chain.from_iterable(map(itertools.repeat, items, counts)))


def _pick(table: Sequence[T], indices: Sequence[int]) -> list[T]:
    """``[table[i] for i in indices]``, done in C."""
    if not indices:
        return []
    if len(indices) == 1:
        return [table[indices[0]]]
    return list(itemgetter(*indices)(table))


# --------------------------------------------------------------------------------------------------
# Text.


def _syllables(rng: random.Random) -> list[str]:
    seen = dict.fromkeys(o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS)
    seen.pop("", None)
    return _shuffled(rng, list(seen))


def _vocabulary(rng: random.Random, size: int = _VOCABULARY_SIZE) -> list[str]:
    """``size`` distinct words, most frequent first (shorter words tend to rank higher).

    Built combinatorially (syllable pairs and triples) rather than word by word, because this runs
    on every call and must cost a few tens of milliseconds.
    """
    sylls = _syllables(rng)
    short = [s for s in sylls if len(s) <= 3]
    candidates = itertools.chain(
        sylls[:2500],
        (a + b for a in short[:150] for b in sylls[:400]),
        (a + b + c for a in short[:30] for b in short[30:60] for c in sylls[400:430]),
    )
    head = list(dict.fromkeys(_ENGLISH_HEAD))
    body = list(dict.fromkeys(itertools.chain(head, candidates)))[len(head) : size]
    # Rank by length with jitter, so frequent words are short but not strictly ordered by length.
    bits = _random_u32(rng, len(body))
    keys = [len(w) * 8 + (x & 31) for w, x in zip(body, bits, strict=True)]
    body = [body[i] for i in sorted(range(len(body)), key=keys.__getitem__)]
    # Decorate a few: apostrophes, numbers, proper nouns (capitalised wherever they appear). Numbers are
    # 37 * rank mod 100000, distinct for distinct ranks, so the words stay distinct.
    out = head
    append = out.append
    for rank, (word, x) in enumerate(zip(body, bits, strict=True)):
        kind = (x >> 5) % 1000
        if kind >= 60:
            append(word)
        elif kind < 12:
            append(word + "'s")
        elif kind < 16:
            append(word + "n't")
        elif kind < 24:
            append(str(rank * 37 % 100_000))
        elif kind < 28:
            append(f"{rank * 37 % 100_000}th")
        else:
            append(word.capitalize())
    return out


@functools.lru_cache(maxsize=2)
def _word_table(seed: int) -> tuple[str, ...]:
    """The Zipf sampling table of the vocabulary for ``seed``.

    It has its own RNG stream (a string seed, hashed with SHA-512 by ``random.seed``, stable across
    versions) so it can be cached: building it is most of the fixed cost of a small corpus.
    """
    # The seed label keeps the module's old name: a new one would change every generated byte.
    rng = random.Random(f"mrkit.corpus.vocabulary:{seed}")
    return tuple(_zipf_table(_vocabulary(rng), offset=1.5))


def _text_pool(rng: random.Random, table: Sequence[str], n_tokens: int) -> list[str]:
    """Lines (without newline) built from ``n_tokens`` words sampled from ``table``, ~6% of them empty."""
    shift = 32 - _TABLE_BITS
    tokens = _pick(table, [x >> shift for x in _random_u32(rng, n_tokens)])
    # Punctuate ~7% of the tokens (a word's variants count as the word after lower() and the regex).
    n_var = n_tokens // 14
    for i, v in zip(
        _random_below(rng, n_var, n_tokens), _random_below(rng, n_var, len(_WORD_VARIANTS)), strict=True
    ):
        before, after = _WORD_VARIANTS[v]
        tokens[i] = before + tokens[i] + after
    lines: list[str] = []
    append = lines.append
    join = " ".join
    # Words per line: 0 (an empty line) with probability 1/16, else 1..32, triangular around 16.
    counts = [
        0 if x < 4096 else 1 + ((x & 255) + (x >> 8)) // 16 for x in _random_below(rng, n_tokens // 8, 65536)
    ]
    endings = _random_below(rng, len(counts), len(_LINE_ENDINGS))
    pos = 0
    for k, e in zip(counts, endings, strict=True):
        if pos + k > n_tokens:
            break
        if k == 0:
            append("")
            continue
        line = join(tokens[pos : pos + k])
        pos += k
        while len(line) > 200:
            line = line[: line.rindex(" ")]
        append(line[:1].upper() + line[1:] + _LINE_ENDINGS[e])
    return lines


def _assemble(rng: random.Random, pool: Sequence[str], n_bytes: int) -> bytes:
    """Pool lines chosen uniformly at random, ``"\\n"``-terminated, cut at the last line end <= n_bytes."""
    if n_bytes <= 0:
        return b""
    average = (sum(map(len, pool)) + len(pool)) / len(pool)
    chunks: list[str] = []
    have = 0
    while have <= n_bytes:
        n = int((n_bytes - have) / average * 1.02) + 16
        text = "\n".join(_pick(pool, _random_below(rng, n, len(pool)))) + "\n"
        chunks.append(text)
        have += len(text)
    data = "".join(chunks).encode("ascii")
    cut = data.rfind(b"\n", 0, n_bytes + 1)
    return data[: cut + 1] if cut >= 0 else data[: data.index(b"\n") + 1]


def _check(size_mb: float, files: int) -> None:
    if not size_mb >= 0:
        raise ConfigError(f"size_mb must be a number >= 0, got {size_mb!r}")
    if not isinstance(files, int) or files < 1:
        raise ConfigError(f"files must be an integer >= 1, got {files!r}")


def generate_text(
    folder: str | os.PathLike[str], *, size_mb: float = 10.0, files: int = 8, seed: int = 0
) -> list[str]:
    """Write ``files`` English-like text files totalling about ``size_mb`` MB into ``folder``.

    The files are named ``text-00000.txt`` … and each holds ``size_mb / files`` MB (cut at a line
    end, so within one line of it). The same arguments always produce the same bytes (module
    docstring).

    Args:
        folder: the directory to write into; created if missing. Other files in it are left alone.
        size_mb: total size in MB of 1,000,000 bytes.
        files: number of files, >= 1.
        seed: the seed of ``random.Random``; different seeds give different text.

    Returns:
        The paths of the files written, in order.

    Raises:
        ConfigError: for a negative size or a file count below 1.
    """
    _check(size_mb, files)
    rng = random.Random(seed)
    total = int(size_mb * MB)
    # Pool: 1/8 of the output's words, at least 60k and at most ~1.2M tokens (about 8 MB of text).
    n_tokens = min(max(total // 6 // 8, 60_000), 1_200_000)
    pool = _text_pool(rng, _word_table(seed), n_tokens)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(files):
        share = total * (i + 1) // files - total * i // files
        path = os.path.join(folder, f"text-{i:05d}.txt")
        with open(path, "wb") as f:
            f.write(_assemble(rng, pool, share))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# Uservisits.


def _ips(rng: random.Random, n: int) -> list[str]:
    """``n`` IPv4 addresses, each followed by ``","``."""
    a = _random_u32(rng, n)
    return [f"{1 + (x >> 24) % 223}.{(x >> 16) & 255}.{(x >> 8) & 255}.{1 + (x & 255) % 254}," for x in a]


def _urls(rng: random.Random, n: int, words: Sequence[str]) -> list[str]:
    """``n`` distinct URLs like ``www.traven.com/blog/moskel-42.html``, in random order."""
    n_hosts = max(n // 12, 16)
    hosts = [
        f"{'www.' if t & 1 else ''}{w}{'-' + v if t & 2 else ''}.{_TLDS[t % len(_TLDS)]}"
        for w, v, t in zip(
            _pick(words, _random_below(rng, n_hosts, len(words))),
            _pick(words, _random_below(rng, n_hosts, len(words))),
            _random_below(rng, n_hosts, 1 << 16),
            strict=True,
        )
    ]
    urls: dict[str, None] = {}
    while len(urls) < n:
        m = n - len(urls) + 64
        candidates = [
            f"{h}/{s + '/' if s else ''}{w}{'-' + str(k) if k >= 300 else ''}.html"
            for h, s, w, k in zip(
                _pick(hosts, _random_below(rng, m, n_hosts)),
                _pick(_SECTIONS, _random_below(rng, m, len(_SECTIONS))),
                _pick(words, _random_below(rng, m, len(words))),
                _random_below(rng, m, 1000),
                strict=True,
            )
        ]
        urls.update(dict.fromkeys(candidates))
    return list(urls)[:n]


def _visit_tails(rng: random.Random, n: int, words: Sequence[str]) -> list[str]:
    """``n`` strings ``visitDate,adRevenue,userAgent,countryCode,languageCode,searchWord,duration\\n``."""
    days = _random_below(rng, n, 40 * 365)  # 1970-01-01 .. ~2009
    cents = _random_u32(rng, n)
    decimals = _random_below(rng, n, 5)
    agents = _pick(_USER_AGENTS, _random_below(rng, n, len(_USER_AGENTS)))
    places = _pick(_PLACES, _random_below(rng, n, len(_PLACES)))
    searches = _pick(words, _random_below(rng, n, min(len(words), 20_000)))
    durations = _random_below(rng, n, 100)
    month_days = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    day_of_year = [f"-{m + 1:02d}-{d + 1:02d}" for m, n_days in enumerate(month_days) for d in range(n_days)]
    dates = [f"{1970 + day // 365}{day_of_year[day % 365]}" for day in days]
    out = []
    for date, c, d, agent, (country, language), search, duration in zip(
        dates, cents, decimals, agents, places, searches, durations, strict=True
    ):
        revenue = f"{(c % 100_000_000) / 100_000:.{d + 2}f}"  # 0.00 .. 999.99999, 2 to 6 decimals
        out.append(f"{date},{revenue},{agent},{country},{language},{search},{1 + duration}\n")
    return out


def _write_uservisits(
    f: BinaryIO,
    rng: random.Random,
    n_bytes: int,
    ips: Sequence[str],
    tails: Sequence[str],
    next_url: Callable[[int], list[str]],
    row_length: float,
) -> None:
    """Write whole rows to ``f``, ``n_bytes`` at most (cut at the last row end), in batches of 64k rows.

    ``ips`` end with ``","``, the URLs from ``next_url`` with ``","`` and ``tails`` with ``"\\n"``, so a
    batch is one C-level join of the interleaved parts.
    """
    have = 0
    while have < n_bytes:
        # Overshoot a little on the last batch: rows past n_bytes are cut, and their URLs' turn in
        # the permutation walk is lost.
        n = min(int((n_bytes - have) / row_length * 1.003) + 16, 65_536)
        parts = zip(
            _pick(ips, _random_below(rng, n, len(ips))),
            next_url(n),
            _pick(tails, _random_below(rng, n, len(tails))),
            strict=True,
        )
        data = "".join(itertools.chain.from_iterable(parts)).encode("ascii")
        if have + len(data) > n_bytes:
            cut = data.rfind(b"\n", 0, n_bytes - have + 1)
            data = data[: cut + 1] if cut >= 0 else (data[: data.index(b"\n") + 1] if have == 0 else b"")
            f.write(data)
            return
        f.write(data)
        have += len(data)


def generate_uservisits(
    path_or_folder: str | os.PathLike[str], *, size_mb: float = 10.0, files: int = 1, seed: int = 0
) -> list[str]:
    """Write uservisits CSV rows (no header) totalling about ``size_mb`` MB.

    Each row is ``sourceIP,destURL,visitDate,adRevenue,userAgent,countryCode,languageCode,searchWord,
    duration``: an IPv4 address, a URL without scheme, a ``YYYY-MM-DD`` date (1970-2009), a revenue
    in 0..1000 with 2 to 6 decimals, a browser user agent, a 3-letter country code, a language tag
    like ``en-US`` (at most 6 characters), a lowercase search word and an integer duration 1..100.
    There are ``round(2600 * size_mb)`` distinct URLs (at least 100); every other row takes the next
    URL of a random permutation of all of them (so nearly all appear), the others pick one with Zipf
    popularity.

    Args:
        path_or_folder: a file path ending in ``.csv`` (only with ``files=1``), or a directory
            (created if missing) that receives ``uservisits-00000.csv`` ….
        size_mb: total size in MB of 1,000,000 bytes.
        files: number of files, >= 1; the rows are dealt out in order, an equal byte share each.
        seed: the seed of ``random.Random``.

    Returns:
        The paths of the files written, in order.

    Raises:
        ConfigError: for a negative size, a file count below 1, or a ``.csv`` path with ``files > 1``.
    """
    _check(size_mb, files)
    target = os.fspath(path_or_folder)
    if target.endswith(".csv"):
        if files != 1:
            raise ConfigError(f"{target!r} is a single .csv file but files={files}; pass a folder instead")
        parent = os.path.dirname(target)
        if parent:
            os.makedirs(parent, exist_ok=True)
        paths = [target]
    else:
        os.makedirs(target, exist_ok=True)
        paths = [os.path.join(target, f"uservisits-{i:05d}.csv") for i in range(files)]
    rng = random.Random(seed)
    total = int(size_mb * MB)
    n_urls = max(round(2600 * size_mb), 100)
    words = [w.lower() for w in _vocabulary(rng, 40_000) if w.isalpha()]
    urls = [url + "," for url in _urls(rng, n_urls, words)]
    # Only the first 50k URLs (of a random order) have Zipf popularity; the rest appear via the walk.
    popular = _zipf_table(urls[:50_000], offset=1.0, bits=18)
    rows_estimate = total // 150 + 1
    ips = _ips(rng, min(max(rows_estimate // 8, 1000), 65_536))
    tails = _visit_tails(rng, min(max(rows_estimate // 8, 1000), 65_536), words)
    cursor = 0
    shift = 32 - 18
    row_length = sum(map(len, urls[:1000])) / len(urls[:1000]) + sum(map(len, ips)) / len(ips)
    row_length += sum(map(len, tails)) / len(tails)

    def next_url(n: int) -> list[str]:
        # Alternate rows: a step of the walk through the permutation (so every URL appears once per
        # lap), then a Zipf-popular pick; built with slices and C-level picks, not a per-row branch.
        nonlocal cursor
        k = (n + 1) // 2
        walk = urls[cursor : cursor + k]
        while len(walk) < k:
            walk += urls[: k - len(walk)]
        cursor = (cursor + k) % n_urls
        picks = _pick(popular, [x >> shift for x in _random_u32(rng, n - k)])
        out = list(itertools.chain.from_iterable(zip(walk, picks, strict=False)))
        if n > 2 * len(picks):
            out.append(walk[-1])
        return out

    for i, path in enumerate(paths):
        share = total * (i + 1) // files - total * i // files
        with open(path, "wb") as f:
            _write_uservisits(f, rng, share, ips, tails, next_url, row_length)
    return paths


def generate_rankings(
    path_or_folder: str | os.PathLike[str], *, uservisits_mb: float = 10.0, files: int = 1, seed: int = 0
) -> list[str]:
    """Write rankings CSV rows (no header) for the URLs of ``generate_uservisits(size_mb=uservisits_mb,
    seed=seed)``: ``pageURL,pageRank,avgDuration``, one row per URL, in the uservisits' URL order.

    Args:
        path_or_folder: a ``.csv`` path (``files=1``) or a directory receiving ``rankings-00000.csv`` ….
        uservisits_mb, seed: those of the uservisits whose URLs to rank.
        files: number of files; the rows are dealt out in order.

    Returns:
        The paths of the files written, in order.
    """
    _check(uservisits_mb, files)
    target = os.fspath(path_or_folder)
    if target.endswith(".csv"):
        if files != 1:
            raise ConfigError(f"{target!r} is a single .csv file but files={files}; pass a folder instead")
        if os.path.dirname(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
        paths = [target]
    else:
        os.makedirs(target, exist_ok=True)
        paths = [os.path.join(target, f"rankings-{i:05d}.csv") for i in range(files)]
    rng = random.Random(seed)  # the same draws as generate_uservisits, up to its URL list
    n_urls = max(round(2600 * uservisits_mb), 100)
    words = [w.lower() for w in _vocabulary(rng, 40_000) if w.isalpha()]
    urls = _urls(rng, n_urls, words)
    ranks = random.Random(seed + 1)  # its own stream: the URL list above stays uservisits'
    page_ranks = _random_below(ranks, n_urls, 10_000)
    durations = _random_below(ranks, n_urls, 100)
    rows = [f"{url},{1 + r},{1 + d}\n" for url, r, d in zip(urls, page_ranks, durations, strict=True)]
    for i, path in enumerate(paths):
        lo, hi = len(rows) * i // files, len(rows) * (i + 1) // files
        with open(path, "w", encoding="ascii", newline="\n") as f:
            f.write("".join(rows[lo:hi]))
    return paths
