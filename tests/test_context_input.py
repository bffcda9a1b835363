"""mrkit.context().input: a map task's input; None in a reduce task; no path for in-memory records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import mrkit


def where_from(record: str) -> Iterator[tuple[str, object]]:
    info = mrkit.context().input
    assert info is not None
    yield "path", info.path
    yield "range", (info.start, info.length, info.index)


def what_reduce_sees(key: str, values: Iterable[object]) -> Iterator[tuple[str, object]]:
    yield key, sorted(set(map(repr, values)))
    yield f"{key}:reduce-input", mrkit.context().input


JOB = mrkit.Job(mapper=where_from, reducer=what_reduce_sees, name="context-input")


def test_records_have_no_path_and_reduce_tasks_no_input() -> None:
    out = dict(mrkit.run(JOB, mrkit.Records(["a", "b"]), executor="inline", n_map=1, n_reduce=1, quiet=True))
    assert out["path"] == ["''"] and out["range"] == ["(0, -1, 0)"]
    assert out["path:reduce-input"] is None


def test_a_file_input_names_its_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "data.txt"
    source.write_text("x\ny\n")
    out = dict(mrkit.run(JOB, str(source), executor="inline", n_map=1, n_reduce=1, quiet=True))
    assert out["path"] == [repr(str(source))]
