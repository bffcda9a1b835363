"""RunOptions: the run options written once; mrkit.run / mrkit.submit keep their keywords and build it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import mrkit
from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import RetryPolicy
from tests import jobs_for_tests as J


def test_run_takes_every_option_and_nothing_else() -> None:
    """A keyword added to run() without a RunOptions field (or the reverse) fails here."""
    run_keywords = set(inspect.signature(mrkit.run).parameters) - {"job", "inputs", "executor"}
    # ttl: asynchronous jobs only; step_id: internal (a multi-step job names its steps with it)
    fields = {f.name for f in dataclasses.fields(RunOptions)} - {"ttl", "step_id"}
    assert run_keywords == fields


def test_defaults_are_normalised_so_equal_options_compare_equal() -> None:
    a = RunOptions(files=["x.txt"], params={"k": 1})
    b = RunOptions(files=("x.txt",), params={"k": 1}, policy=None)  # type: ignore[arg-type]
    assert a == b and a.policy == RetryPolicy() and a.files == ("x.txt",)
    assert a.replace(n_reduce=3).n_reduce == 3 and a.n_reduce is None


def test_output_format_is_pickle_for_an_in_memory_result_and_checked() -> None:
    assert RunOptions().output_format == "pickle"
    assert RunOptions(output="out", format="jsonl").output_format == "jsonl"
    with pytest.raises(mrkit.ConfigError, match="format"):
        _ = RunOptions(output="out", format="xml").output_format


def test_an_unknown_option_is_one_sentence_naming_it() -> None:
    said = r"mrkit.submit\(\) got unknown option n_mpa; the options are: "
    with pytest.raises(mrkit.ConfigError, match=said):
        RunOptions.from_keywords("mrkit.submit", n_mpa=2)


def test_submit_refuses_an_unknown_option_before_starting_anything() -> None:
    with pytest.raises(mrkit.ConfigError, match="unknown option outptu"):
        mrkit.submit(J.WORDCOUNT, mrkit.Records(["a b"]), executor="inline", outptu="x")


def test_apply_merges_params_and_attaches_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    side = tmp_path / "stop.txt"
    side.write_text("the\n")
    job = RunOptions(params={"min_count": 2}, files=(str(side),)).apply(J.WORDCOUNT)
    assert job.params["min_count"] == 2 and any("stop.txt" in str(f) for f in job.files)
    with pytest.raises(mrkit.ConfigError, match="expected an mrkit.Job"):
        RunOptions().apply(lambda: None)
