"""Serverless cancel against the publish step: publishing is the commit, decided once per run."""

from __future__ import annotations

import json

import pytest

from mrkit.backends.aws_lambda import jobs as osj
from mrkit.backends.aws_lambda.wire import decision_key
from mrkit.data.output import read_output
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.test_lambda_handler import LINES
from tests.test_lambda_jobs import committed_job, executor, no_function_left_running  # noqa: F401


@pytest.fixture
def committed(tmp_path, s3_url):  # type: ignore[no-untyped-def]
    """A serverless job whose every task committed, waiting for its publish step, and its handle."""
    storage, out, plan = committed_job(executor(tmp_path, s3_url), s3_url)
    return storage, out, plan, osj.ObjectStoreJobHandle(plan.job_id, storage.url)


def end_state(storage, plan) -> str:  # type: ignore[no-untyped-def]
    return json.loads(storage.get(osj.end_key(plan.job_id)))["state"]


def test_a_cancel_after_the_publish_began_is_refused_and_the_job_ends_done(committed) -> None:  # type: ignore[no-untyped-def]
    storage, out, plan, handle = committed
    storage.put(decision_key(plan.job_id), b"publish")  # an invocation decided to publish
    assert handle.cancel() is False
    osj._publish(storage, plan, "req-1", 1)  # that invocation (or its retry) goes on
    assert end_state(storage, plan) == "done" and out.exists("_SUCCESS")
    assert sorted(read_output(out.url)) == reference(J.WORDCOUNT, LINES)


def test_a_publish_after_a_cancel_publishes_nothing(committed) -> None:  # type: ignore[no-untyped-def]
    storage, out, plan, handle = committed
    assert handle.cancel() is True
    osj._publish(storage, plan, "req-1", 1)
    assert end_state(storage, plan) == "cancelled" and not out.exists("_SUCCESS")
    assert handle.cancel() is False  # already ended


def test_a_canceller_that_died_after_deciding_still_ends_the_run(committed) -> None:  # type: ignore[no-untyped-def]
    storage, out, plan, _handle = committed
    storage.put(decision_key(plan.job_id), b"cancel")  # its end record was never written
    osj._publish(storage, plan, "req-1", 1)
    assert end_state(storage, plan) == "cancelled" and not out.exists("_SUCCESS")
