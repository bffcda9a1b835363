"""How an event reaches a function: the invokers (boto3 for AWS Lambda, the local function runtime).

An invoker's :meth:`Invoker.config` is JSON carried in a serverless job's events (the ``job``
member's ``invoker``, :mod:`mrkit.backends.aws_lambda.wire`), so that an invocation that completes a
phase can invoke the next one: :func:`invoker_from_config` turns it back into an invoker.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

from mrkit.errors import ConfigError, MissingExtra, WorkerLost


class Invoker(Protocol):
    """Delivers events to one function."""

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        """Invoke; return the response (sync) or None (async, once accepted)."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON that :func:`invoker_from_config` turns back into an invoker (inside a function)."""
        ...

    def timeout(self) -> float:
        """The function's timeout in seconds."""
        ...

    def close(self) -> None: ...


class BotoInvoker:
    """Invokes a deployed AWS Lambda function with boto3.

    Args:
        function: name, ARN or ``name:alias``.
        region: AWS region (default: the environment's).
    """

    def __init__(self, function: str, region: str | None = None) -> None:
        self.function = function
        self.region = region
        self._client: Any = None
        self._timeout: float | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import boto3.session
                    from botocore.config import Config
                except ImportError:
                    raise MissingExtra("the lambda:// executor", "lambda", "boto3") from None
                # Invoke returns 202 at once for Event; a sync call may run for the function's whole timeout.
                config = Config(
                    read_timeout=905, retries={"max_attempts": 4, "mode": "standard"}, max_pool_connections=64
                )
                session = boto3.session.Session()
                self._client = session.client("lambda", region_name=self.region, config=config)
            return self._client

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        response = self.client.invoke(
            FunctionName=self.function,
            InvocationType="RequestResponse" if sync else "Event",
            Payload=json.dumps(event).encode(),
        )
        if not sync:
            return None
        payload = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError"):
            if isinstance(payload, dict):
                message = f"{payload.get('errorType', '?')}: {payload.get('errorMessage', payload)}"
            else:
                message = str(payload)
            raise WorkerLost(f"function {self.function}: {response['FunctionError']} error: {message}")
        return payload

    def config(self) -> dict[str, Any]:
        return {"kind": "lambda", "function": self.function, "region": self.region}

    def timeout(self) -> float:
        if self._timeout is None:
            try:
                described = self.client.get_function_configuration(FunctionName=self.function)
                self._timeout = float(described["Timeout"])
            except Exception:  # not allowed to read it, or not deployed yet: assume Lambda's maximum
                self._timeout = 900.0
        return self._timeout

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LocalInvoker:
    """Invokes the local function runtime (:class:`~mrkit.backends.aws_lambda.emulator.LocalFunction`)."""

    def __init__(self, config: Any, *, detached: bool = False) -> None:
        from mrkit.backends.aws_lambda.emulator import LocalFunction  # the far side, imported late (layers)

        self.function = LocalFunction(config, detached=detached)

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        return self.function.invoke(event, sync=sync)

    def config(self) -> dict[str, Any]:
        return {"kind": "local", "config": self.function.config.to_dict()}

    def timeout(self) -> float:
        return float(self.function.config.timeout)

    def close(self) -> None:
        self.function.shutdown()


def invoker_from_config(config: dict[str, Any]) -> Any:
    """Rebuild an invoker from :meth:`Invoker.config` (local ones are detached: a function's
    invocations must outlive it; ``dask`` is a Dask cluster's, :mod:`.dask_invoker`)."""
    if config.get("kind") == "lambda":
        return BotoInvoker(config["function"], config.get("region"))
    if config.get("kind") == "local":
        from mrkit.backends.aws_lambda.emulator import FunctionConfig

        return LocalInvoker(FunctionConfig.from_dict(config["config"]), detached=True)
    if config.get("kind") == "dask":
        from mrkit.backends.aws_lambda.dask_invoker import DaskInvoker  # imports distributed: only then

        return DaskInvoker.from_config(config)
    raise ConfigError(f"unknown invoker {config!r}: expected kind 'lambda', 'local' or 'dask'")
