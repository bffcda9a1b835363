"""Rough edges of the public API (issues 13 and 15): options that must reach their executor."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import mrkit
from mrkit.errors import ConfigError
from mrkit.model.reference import reference
from tests.jobs_for_tests import WORDCOUNT, total, words


def test_worker_python_reaches_the_http_workers_the_driver_starts(tmp_path: Path) -> None:
    # A wrapper interpreter that leaves a mark and then runs the real one: the mark proves the
    # driver started its workers with worker_python=, not sys.executable.
    marks = tmp_path / "marks"
    marks.mkdir()
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\ntouch "{marks}/$$"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    records = [f"w{i % 5} x" for i in range(50)]
    job = mrkit.Job(mapper=words, reducer=total)
    result = mrkit.run(
        job,
        mrkit.Records(records),
        executor="http",
        workers=1,
        n_map=2,
        n_reduce=1,
        worker_python=str(wrapper),
    )
    assert dict(result) == dict(reference(WORDCOUNT, records))
    assert len(os.listdir(marks)) >= 1


def test_worker_python_is_refused_for_an_executor_that_starts_no_python() -> None:
    expected = "worker_python= applies to executors that start workers .http., not 'inline'"
    with pytest.raises(ConfigError, match=expected):
        mrkit.run(
            mrkit.Job(mapper=words), mrkit.Records(["a"]), executor="inline", worker_python="/bin/false"
        )
