"""The job-service registry: every asynchronous executor has a service, found by its registry key."""

from __future__ import annotations

import importlib

from mrkit.coordination.service import SERVICES, job_service
from mrkit.execution.base import EXECUTORS, open_executor


def load(target: str) -> type:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def test_every_asynchronous_executor_has_a_job_service_with_the_four_calls() -> None:
    asynchronous = {key for key, target in EXECUTORS.items() if load(target).asynchronous}
    assert asynchronous == set(SERVICES), "an asynchronous executor without a service, or the reverse"
    for target in SERVICES.values():
        service = load(target)
        for call in ("submit_job", "handle", "list_jobs", "resume_job"):
            assert callable(getattr(service, call, None)), f"{target} lacks {call}"


def test_executors_that_run_jobs_in_the_caller_have_none() -> None:
    for name in ("inline", "processes"):
        executor = open_executor(name, workers=1)
        try:
            assert job_service(executor) is None
        finally:
            executor.shutdown()


def test_the_serverless_service_is_found_for_lambda_local(tmp_path) -> None:
    executor = open_executor("lambda-local", workers=1, state_dir=str(tmp_path / "fn"))
    try:
        service = job_service(executor)
        assert service is not None and service.executor is executor
        assert type(service).__name__ == "ServerlessJobService"
        assert service.list_jobs() == []  # a fresh storage: no job submitted yet
    finally:
        executor.shutdown()
