"""Serverless cancel against the publish step: publishing is the commit, decided once per run."""

from __future__ import annotations

import json

import pytest

from mrkit.backends.aws_lambda import jobs as osj
from mrkit.backends.aws_lambda.executor import build_event
from mrkit.backends.aws_lambda.handler import handler
from mrkit.backends.aws_lambda.wire import decision_key
from mrkit.data.output import read_output
from mrkit.model.reference import reference
from mrkit.model.task import TaskResult
from tests import jobs_for_tests as J
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.test_lambda_handler import LINES, context, plan_job
from tests.test_lambda_jobs import executor, no_function_left_running  # noqa: F401 - autouse fixture


@pytest.fixture
def committed(tmp_path, s3_url):  # type: ignore[no-untyped-def]
    """A serverless job whose every task committed, waiting for its publish step."""
    ex = executor(tmp_path, s3_url)
    storage, out, plan = plan_job(s3_url)
    doc = {"plan": osj._plan_to_dict(plan), "invoker": ex.invoker.config(), "submitted": 0.0, "executor": "t"}
    storage.put(osj.plan_key(plan.job_id), json.dumps(doc).encode())
    for spec in (*plan.map_specs, *plan.reduce_specs):  # plain events: the tasks commit, nothing advances
        [raw] = handler(build_event([spec], storage.url), context())["results"]
        assert TaskResult.decode(raw).committed
    handle = osj.ObjectStoreJobHandle(plan.job_id, storage.url)
    return storage, out, plan, handle


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
