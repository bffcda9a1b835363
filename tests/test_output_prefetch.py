"""``read_output`` parses the next part in a forked child (mrkit.data.prefetch): the pairs, their
order and the errors must be exactly those of reading every part in the calling process, and no
child may outlive the read. Each case runs in a fresh interpreter: pytest's own process may run
threads, and then no child is forked at all (which the last test checks)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mrkit.data import prefetch
from mrkit.data.output import read_output, write_pairs

# Run in the child interpreter: counts the children that handed back a parse, then reads.
HARNESS = """
import json, os, sys
from mrkit.data import prefetch
from mrkit.data.output import read_output

prefetch.PREFETCH_MIN_BYTES = 1
prefetch.resident_bytes = lambda: 0  # these parts are small next to an interpreter's memory
taken = []
result = prefetch.Prefetch.result
def counting_result(self):
    pairs = result(self)
    taken.append(pairs is not None)
    return pairs
prefetch.Prefetch.result = counting_result
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


def run_harness(folder: Path, read: str = "pairs = list(read_output(sys.argv[1]))", setup: str = "") -> dict:
    # ``read`` goes inside the harness's try block: dedented, then indented to the block's depth.
    code = HARNESS.format(
        read=textwrap.dedent(read).strip().replace("\n", "\n    "), setup=textwrap.dedent(setup)
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout)


def make_output(folder: Path, parts: list[list[tuple]], fmt: str = "tsv") -> None:
    folder.mkdir()
    for i, pairs in enumerate(parts):
        with open(folder / f"part-{i:05d}", "wb") as f:
            write_pairs(f, pairs, fmt)
    (folder / "_SUCCESS").write_text(json.dumps({"format": fmt, "parts": len(parts)}))


def sample_parts(n_parts: int = 4, per_part: int = 3000) -> list[list[tuple]]:
    return [[(f"k{p}-{i:05d}", i * 0.5 if i % 2 else i) for i in range(per_part)] for p in range(n_parts)]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_prefetched_parts_give_the_same_pairs_in_the_same_order(tmp_path, fmt):
    parts = sample_parts()
    make_output(tmp_path / "out", parts, fmt)
    got = run_harness(tmp_path / "out")
    assert got["taken"] == [True, True, True]  # parts 1-3 came from children
    assert [tuple(p) for p in got["pairs"]] == [pair for part in parts for pair in part]
    assert got["children_left"] is False


def test_a_corrupt_part_read_ahead_fails_with_the_sentence_of_a_plain_read(tmp_path):
    make_output(tmp_path / "out", sample_parts(3, 50))
    with open(tmp_path / "out" / "part-00002", "ab") as f:
        f.write(b'"x"\tnot json\n')
    got = run_harness(tmp_path / "out")
    assert got["taken"] == [True, False]  # the child of part 2 failed: the caller parsed it
    assert got["error"] == f"InputError: {tmp_path}/out/part-00002 line 51 is not valid tsv output: " + (
        "Expecting value: line 1 column 1 (char 0)"
    )
    with pytest.raises(Exception, match="part-00002 line 51 is not valid tsv output"):
        list(read_output(tmp_path / "out"))


def test_a_child_killed_before_it_answers_leaves_the_part_to_the_caller(tmp_path):
    parts = sample_parts(3, 200)
    make_output(tmp_path / "out", parts)
    kill_every_child = """
    import signal
    start = prefetch.Prefetch.__init__
    def killed(self, parse):
        start(self, parse)
        os.kill(self.pid, signal.SIGKILL)
    prefetch.Prefetch.__init__ = killed
    """
    got = run_harness(tmp_path / "out", setup=kill_every_child)
    assert got["taken"] == [False, False]
    assert [tuple(p) for p in got["pairs"]] == [pair for part in parts for pair in part]
    assert got["children_left"] is False


def test_children_reaped_by_someone_else_still_hand_their_parts_over(tmp_path):
    parts = sample_parts(3, 200)
    make_output(tmp_path / "out", parts)
    got = run_harness(tmp_path / "out", setup="import signal; signal.signal(signal.SIGCHLD, signal.SIG_IGN)")
    assert [tuple(p) for p in got["pairs"]] == [pair for part in parts for pair in part]
    assert got["taken"] == [True, True]


def test_a_reader_that_stops_early_leaves_no_child(tmp_path):
    make_output(tmp_path / "out", sample_parts(3, 200))
    read_two = """
    it = read_output(sys.argv[1])
    pairs = [next(it), next(it)]
    it.close()
    """
    got = run_harness(tmp_path / "out", read=read_two)
    assert [tuple(p) for p in got["pairs"]] == [("k0-00000", 0), ("k0-00001", 0.5)]
    assert got["taken"] == []
    assert got["children_left"] is False


def test_a_read_interrupted_while_taking_a_part_back_closes_nothing_twice(tmp_path):
    # result() is interrupted after its file object took the pipe's read end: cancel() must kill and
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
    got = run_harness(
        tmp_path / "out",
        read=read,
        setup=interrupt_the_first_take,
    )
    assert got["pairs"] == ["interrupted"] and got["taken"] == ["interrupted"]
    assert got["children_left"] is False


def test_no_child_outside_the_safe_cases(monkeypatch):
    monkeypatch.setattr(prefetch, "PREFETCH_MIN_BYTES", 1)
    assert prefetch.can_prefetch(10, local=False) is False  # not local storage
    assert prefetch.can_prefetch(prefetch.PREFETCH_MAX_BYTES + 1, local=True) is False  # too big to hold
    monkeypatch.setattr(prefetch, "single_threaded", lambda: False)
    assert prefetch.can_prefetch(10, local=True) is False  # threads: a fork could deadlock
    monkeypatch.setattr(prefetch, "single_threaded", lambda: True)
    monkeypatch.setattr(prefetch, "resident_bytes", lambda: 256 * 10)
    assert prefetch.can_prefetch(10, local=True) is True
    monkeypatch.setattr(prefetch, "resident_bytes", lambda: 256 * 10 + 1)
    assert prefetch.can_prefetch(10, local=True) is False  # a fork of this much memory costs more


def test_resident_bytes_reads_this_process():
    assert 1 << 20 < prefetch.resident_bytes() < 64 << 30
