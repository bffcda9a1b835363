"""``read_output`` parses a local output in a forked child, block by block (mrkit.data.prefetch):
the pairs, their order and the errors must be exactly those of reading every part in the calling
process, the child's memory must stay bounded, and no child may outlive the read. Each case runs in
a fresh interpreter: pytest's own process may run threads, and then no child is forked at all
(which the last tests check)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mrkit.data import prefetch
from mrkit.data.output import read_output, write_pairs

# Run in the child interpreter: small blocks (so that every case spans many), a record of what each
# read-ahead child handed back (items taken, complete or not), then the read.
HARNESS = """
import json, os, sys
from mrkit.data import output, prefetch
from mrkit.data.output import read_output

prefetch.PREFETCH_MIN_BYTES = 1
prefetch.resident_bytes = lambda: 0  # these parts are small next to an interpreter's memory
output._HEAD_BLOCK = 1024
output._AHEAD_BLOCK = 4096
taken = []
items = prefetch.ReadAhead.items
def counting_items(self):
    n = 0
    for item in items(self):
        n += 1
        yield item
    taken.append([n, self.complete])
prefetch.ReadAhead.items = counting_items
{setup}
try:
    {read}
except Exception as exc:
    print(json.dumps({{"error": f"{{type(exc).__name__}}: {{exc}}", "taken": taken}}))
    sys.exit(0)
try:
    os.waitpid(-1, os.WNOHANG)
    left = True
except ChildProcessError:
    left = False
print(json.dumps({{"pairs": pairs, "taken": taken, "children_left": left}}))
"""


def run_harness(
    folder: Path, read: str = "pairs = list(read_output(sys.argv[1]))", setup: str = "", stderr: bool = False
) -> Any:
    """Run the harness on ``folder``: its JSON answer, and its stderr too when ``stderr``."""
    # ``read`` goes inside the harness's try block: dedented, then indented to the block's depth.
    code = HARNESS.format(
        read=textwrap.dedent(read).strip().replace("\n", "\n    "), setup=textwrap.dedent(setup)
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120, check=True
    )
    answer = json.loads(done.stdout)
    return (answer, done.stderr) if stderr else answer


def make_output(folder: Path, parts: list[list[tuple]], fmt: str = "tsv") -> None:
    folder.mkdir()
    for i, pairs in enumerate(parts):
        with open(folder / f"part-{i:05d}", "wb") as f:
            write_pairs(f, pairs, fmt)
    (folder / "_SUCCESS").write_text(json.dumps({"format": fmt, "parts": len(parts)}))


def sample_parts(n_parts: int = 4, per_part: int = 3000) -> list[list[tuple]]:
    return [[(f"k{p}-{i:05d}", i * 0.5 if i % 2 else i) for i in range(per_part)] for p in range(n_parts)]


def plain_read_error(folder: Path) -> str:
    """The sentence of reading ``folder`` in pytest's process (threads: no child is ever forked)."""
    with pytest.raises(Exception) as caught:
        list(read_output(folder))
    return f"{type(caught.value).__name__}: {caught.value}"


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_read_ahead_gives_the_same_pairs_in_the_same_order(tmp_path, fmt):
    parts = sample_parts()
    make_output(tmp_path / "out", parts, fmt)
    got = run_harness(tmp_path / "out")
    [[blocks, complete]] = got["taken"]
    assert complete and blocks > 4 * 10  # every part, in many blocks, came from the child
    assert [tuple(p) for p in got["pairs"]] == [pair for part in parts for pair in part]
    assert got["children_left"] is False


@pytest.mark.parametrize(
    ("part", "line", "bad"),
    [
        (2, 51, b'"x"\tnot json\n'),  # appended to a later part
        (0, 1500, b'"x"\tnot json\n'),  # in the middle of the first part, past the caller's block
        (1, 700, b'"b\xff"\t2\n'),  # not UTF-8, mid-part
    ],
)
def test_a_corrupt_line_read_ahead_fails_with_the_sentence_of_a_plain_read(tmp_path, part, line, bad):
    make_output(tmp_path / "out", sample_parts(3, 3000 if line > 51 else 50))
    path = tmp_path / "out" / f"part-{part:05d}"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[: line - 1], bad, *lines[line - 1 :]]))
    got = run_harness(tmp_path / "out")
    [[_, complete]] = got["taken"]
    assert complete is False  # the child stopped at the bad block; the caller read on from there
    assert got["error"] == plain_read_error(tmp_path / "out")
    assert f"part-{part:05d} line {line} is not valid tsv output" in got["error"]


def test_a_child_killed_before_it_answers_leaves_the_read_to_the_caller(tmp_path):
    parts = sample_parts(3, 200)
    make_output(tmp_path / "out", parts)
    kill_every_child = """
    import signal
    start = prefetch.ReadAhead.__init__
    def killed(self, produce):
        start(self, produce)
        os.kill(self.pid, signal.SIGKILL)
    prefetch.ReadAhead.__init__ = killed
    """
    got = run_harness(tmp_path / "out", setup=kill_every_child)
    assert got["taken"] == [[0, False]]
    assert [tuple(p) for p in got["pairs"]] == [pair for part in parts for pair in part]
    assert got["children_left"] is False


def test_a_child_reaped_by_someone_else_still_hands_its_blocks_over(tmp_path):
    parts = sample_parts(3, 200)
    make_output(tmp_path / "out", parts)
    got = run_harness(tmp_path / "out", setup="import signal; signal.signal(signal.SIGCHLD, signal.SIG_IGN)")
    assert [tuple(p) for p in got["pairs"]] == [pair for part in parts for pair in part]
    assert got["taken"][0][1] is True


def test_a_child_whose_writer_fails_ends_and_leaves_the_read_to_the_caller(tmp_path):
    # The child's writer thread runs out of memory after two items: the child must end at once (its
    # producer would otherwise wait on a full queue forever, and the caller on the pipe), quietly,
    # and the caller read the rest itself.
    parts = sample_parts(3, 2000)
    make_output(tmp_path / "out", parts)
    failing_writer = """
    real_open = open
    class FailingPipe:
        def __init__(self, f):
            self.f, self.writes = f, 0
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def write(self, data):
            self.writes += 1
            if self.writes > 4:  # two items: a header and a body each
                raise MemoryError
            return self.f.write(data)
        def flush(self):
            self.f.flush()
    def opening(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FailingPipe(f) if isinstance(file, int) and "w" in mode else f
    prefetch.open = opening
    """
    code_and_err = run_harness(tmp_path / "out", setup=failing_writer, stderr=True)
    got, stderr = code_and_err
    assert got["taken"] == [[2, False]]
    assert [tuple(p) for p in got["pairs"]] == [pair for part in parts for pair in part]
    assert got["children_left"] is False
    assert stderr == ""  # no thread traceback from the child on the user's terminal


def test_a_reader_that_stops_early_leaves_no_child(tmp_path):
    make_output(tmp_path / "out", sample_parts(3, 200))
    read_two = """
    it = read_output(sys.argv[1])
    pairs = [next(it), next(it)]
    it.close()
    """
    got = run_harness(tmp_path / "out", read=read_two)
    assert [tuple(p) for p in got["pairs"]] == [("k0-00000", 0), ("k0-00001", 0.5)]
    assert got["children_left"] is False


def test_the_child_parses_only_a_bounded_way_ahead_of_a_slow_reader(tmp_path):
    make_output(tmp_path / "out", sample_parts(4, 20000))  # ~1.6 MB: ~400 blocks of 4 KiB
    count_blocks = """
    import time
    prefetch.QUEUE_ITEMS = 2
    produced = os.open(sys.argv[1] + "/../produced", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    parsed_blocks = output._parsed_blocks
    def counted(*args):
        for item in parsed_blocks(*args):
            os.write(produced, b".")  # in the child: one byte per block parsed
            yield item
    output._parsed_blocks = counted
    """
    read_slowly = """
    it = read_output(sys.argv[1])
    pairs = [next(it) for _ in range(100)]  # the caller's own first block
    time.sleep(1.0)  # the child runs ahead until the queue and the pipe are full, then waits
    ahead = os.path.getsize(sys.argv[1] + "/../produced")
    pairs += list(it)
    pairs = [ahead, len(pairs), os.path.getsize(sys.argv[1] + "/../produced")]
    """
    got = run_harness(tmp_path / "out", read=read_slowly, setup=count_blocks)
    ahead, n_pairs, produced = got["pairs"]
    assert n_pairs == 80000 and produced > 300
    # Two queued, the pipe's 64 KiB (~16 blocks of 4 KiB pickled), one being written, one parsed.
    assert 3 <= ahead <= 24, ahead  # it did run ahead, and stopped
    assert got["children_left"] is False


def test_a_read_interrupted_while_taking_from_the_child_closes_nothing_twice(tmp_path):
    # items() is interrupted after its file object took the pipe's read end: cancel() must kill and
    # reap the child without closing that descriptor number again (by then it may be another file's).
    make_output(tmp_path / "out", sample_parts(3, 200))
    interrupt_the_first_take = """
    import io
    real_open = open
    def interrupting_open(file, *args, **kwargs):
        f = real_open(file, *args, **kwargs)
        if isinstance(file, int) and not taken:
            f.close()
            taken.append("interrupted")
            raise KeyboardInterrupt
        return f
    prefetch.open = interrupting_open
    """
    read = """
    try:
        pairs = list(read_output(sys.argv[1]))
    except KeyboardInterrupt:
        pairs = ["interrupted"]
        spare = os.open(sys.argv[1] + "/_SUCCESS", os.O_RDONLY)  # takes the lowest free number
        os.fstat(spare)  # still open: nobody closed it behind our back
    """
    got = run_harness(tmp_path / "out", read=read, setup=interrupt_the_first_take)
    assert got["pairs"] == ["interrupted"] and got["taken"] == ["interrupted"]
    assert got["children_left"] is False


def test_no_child_in_pytests_threaded_process_and_the_same_pairs(tmp_path):
    parts = sample_parts(2, 100)
    make_output(tmp_path / "out", parts)
    assert list(read_output(tmp_path / "out")) == [pair for part in parts for pair in part]


def test_no_child_outside_the_safe_cases(monkeypatch):
    assert prefetch.can_prefetch(prefetch.PREFETCH_MIN_BYTES - 1, local=True) is False  # too little to pay
    monkeypatch.setattr(prefetch, "PREFETCH_MIN_BYTES", 1)
    assert prefetch.can_prefetch(10, local=False) is False  # not local storage
    monkeypatch.setattr(prefetch, "single_threaded", lambda: False)
    assert prefetch.can_prefetch(10, local=True) is False  # threads: a fork could deadlock
    monkeypatch.setattr(prefetch, "single_threaded", lambda: True)
    monkeypatch.setattr(prefetch, "resident_bytes", lambda: 256 * 10)
    assert prefetch.can_prefetch(10, local=True) is True
    monkeypatch.setattr(prefetch, "resident_bytes", lambda: 256 * 10 + 1)
    assert prefetch.can_prefetch(10, local=True) is False  # a fork of this much memory costs more


def test_resident_bytes_reads_this_process():
    assert 1 << 20 < prefetch.resident_bytes() < 64 << 30
