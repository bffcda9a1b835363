"""``mrkit lambda deploy NAME --role ARN`` and ``mrkit lambda remove NAME``: the function on AWS Lambda.

``deploy`` builds a zip of mrkit and cloudpickle (the handler's only dependency outside the Lambda
Python runtime, which already provides boto3) plus the job modules named with ``--job``, then
creates the function, or updates its code and configuration when it exists. It also sets what the
executor relies on:

* handler ``mrkit.backends.aws_lambda.handler.handler``, runtime ``python{X.Y}`` of *this* interpreter
  (cloudpickled job code is unpickled by the same Python version);
* asynchronous retries (``MaximumRetryAttempts=2``) with the on-failure destination set to the
  function itself, so an event whose every delivery failed reaches the handler as a record and
  its task is reported lost at once (instead of after ``lost_after``);
* reserved concurrency when ``--concurrency`` is given (caps a serverless job's parallelism).

``remove`` deletes the function (and with it its invoke configuration). The IAM role and policies
are not created here: docs/serverless.md lists the policy the role needs.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from typing import Any

import click

from mrkit.backends.aws_lambda.wire import HANDLER

_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same zip (and CodeSha256)


def runtime_name() -> str:
    """The Lambda runtime matching this interpreter, e.g. ``python3.11``."""
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def _add_tree(archive: zipfile.ZipFile, folder: str, arcbase: str) -> None:
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith(_SKIP_SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            _add_file(archive, path, f"{arcbase}/{rel}")


def _add_file(archive: zipfile.ZipFile, path: str, arcname: str) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
    info.external_attr = 0o644 << 16  # readable by the Lambda runtime's user
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(path, "rb") as f:
        archive.writestr(info, f.read())


def _module_source(job: str) -> tuple[str, str]:
    """``(path, arcname)`` of a ``--job``: a .py file, a package folder, or an importable module name."""
    if os.path.isfile(job) and job.endswith(".py"):
        return job, os.path.basename(job)
    if os.path.isdir(job) and os.path.isfile(os.path.join(job, "__init__.py")):
        return job, os.path.basename(os.path.abspath(job))
    top = job.split(":", 1)[0].split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        raise click.BadParameter(
            f"{job!r} is neither a .py file, a package folder nor an importable module", param_hint="--job"
        )
    if spec.submodule_search_locations:
        return os.path.dirname(spec.origin), top
    return spec.origin, f"{top}.py"


def build_package(jobs: Sequence[str] = ()) -> bytes:
    """The function's zip: ``mrkit/``, ``cloudpickle/`` and each job module, at the zip's root.

    Args:
        jobs: ``path/to/job.py``, a package folder, or a module name (``wordcount`` or
            ``pkg.module:Name``: the whole top-level package is included).

    Raises:
        click.BadParameter: a job that cannot be found.
    """
    import cloudpickle

    import mrkit

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for module in (mrkit, cloudpickle):
            assert module.__file__ is not None
            _add_tree(archive, os.path.dirname(module.__file__), module.__name__)
        for job in jobs:
            path, arcname = _module_source(job)
            if os.path.isdir(path):
                _add_tree(archive, path, arcname)
            else:
                _add_file(archive, path, arcname)
    return buffer.getvalue()


def _client(region: str | None) -> Any:
    try:
        import boto3.session
    except ImportError:
        from mrkit.errors import MissingExtra

        raise MissingExtra("mrkit lambda", "lambda", "boto3") from None
    return boto3.session.Session().client("lambda", region_name=region)


def _wait_ready(client: Any, name: str, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the function is Active and no update is in progress (Lambda refuses changes before)."""
    deadline = time.monotonic() + timeout
    while True:
        config: dict[str, Any] = client.get_function_configuration(FunctionName=name)
        if config.get("State", "Active") != "Pending" and config.get("LastUpdateStatus") != "InProgress":
            return config
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"function {name} is still {config.get('State')}/"
                f"{config.get('LastUpdateStatus')} after {timeout:.0f}s"
            )
        time.sleep(1.0)


def deploy_function(
    name: str,
    role: str,
    *,
    memory: int = 1024,
    timeout: int = 900,
    region: str | None = None,
    jobs: Sequence[str] = (),
    environment: dict[str, str] | None = None,
    concurrency: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Create or update the function ``name``.

    Returns:
        ``("created" | "updated", function configuration)``.

    Raises:
        botocore.exceptions.ClientError: AWS refused (no permission, a role Lambda cannot assume…).
    """
    client = _client(region)
    package = build_package(jobs)
    settings = {
        "Role": role,
        "Handler": HANDLER,
        "Runtime": runtime_name(),
        "Timeout": timeout,
        "MemorySize": memory,
        "Environment": {"Variables": dict(environment or {})},
    }
    try:
        client.create_function(
            FunctionName=name,
            Code={"ZipFile": package},
            Publish=False,
            Description="mrkit function worker",
            **settings,
        )
        action = "created"
    except client.exceptions.ResourceConflictException:
        client.update_function_code(FunctionName=name, ZipFile=package)
        _wait_ready(client, name)
        client.update_function_configuration(FunctionName=name, **settings)
        action = "updated"
    config = _wait_ready(client, name)
    client.put_function_event_invoke_config(
        FunctionName=name,
        MaximumRetryAttempts=2,
        DestinationConfig={"OnFailure": {"Destination": config["FunctionArn"]}},
    )
    if concurrency is not None:
        client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=concurrency)
    return action, config


def remove_function(name: str, *, region: str | None = None) -> bool:
    """Delete the function ``name``; False when there was none."""
    client = _client(region)
    try:
        client.delete_function(FunctionName=name)
    except client.exceptions.ResourceNotFoundException:
        return False
    return True


def _parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} must look like NAME=VALUE", param_hint="--env")
        env[key] = value
    return env


@click.group("lambda", context_settings={"help_option_names": ["-h", "--help"]})
def lambda_group() -> None:
    """Deploy or remove the mrkit function on AWS Lambda (extra: lambda)."""


@lambda_group.command()
@click.argument("name")
@click.option(
    "--role",
    required=True,
    envvar="MRKIT_LAMBDA_ROLE",
    help="ARN of the IAM role the function runs as (see docs/serverless.md for its policy).",
)
@click.option(
    "--memory",
    type=click.IntRange(128, 10240),
    default=1024,
    show_default=True,
    envvar="MRKIT_LAMBDA_MEMORY",
    help="Memory in MB (also sets the CPU share).",
)
@click.option(
    "--timeout",
    type=click.IntRange(1, 900),
    default=900,
    show_default=True,
    envvar="MRKIT_LAMBDA_TIMEOUT",
    help="Seconds one invocation (one task) may run.",
)
@click.option(
    "--region", default=None, envvar="MRKIT_LAMBDA_REGION", help="AWS region (default: AWS_REGION)."
)
@click.option(
    "--job",
    "jobs",
    multiple=True,
    metavar="MODULE",
    help="A job module to include: file.py, a package folder or a module name (repeatable).",
)
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Function environment variable.")
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=None,
    help="Reserved concurrency: at most this many invocations at once.",
)
@click.option(
    "--zip",
    "zip_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also write the package to this file.",
)
def deploy(
    name: str,
    role: str,
    memory: int,
    timeout: int,
    region: str | None,
    jobs: tuple[str, ...],
    env: tuple[str, ...],
    concurrency: int | None,
    zip_path: str | None,
) -> None:
    """Package mrkit (and --job modules) and create or update the function NAME.

    \b
    Example:
      mrkit lambda deploy mrkit-wc --role arn:aws:iam::123456789012:role/mrkit-fn --memory 2048
      mrkit run wordcount.py:WordCount 's3://data/texts/*.txt' --executor lambda://mrkit-wc \\
          --storage s3://scratch/mrkit -o s3://results/wc/
    """
    if zip_path:
        with open(zip_path, "wb") as f:
            f.write(build_package(jobs))
    action, config = deploy_function(
        name,
        role,
        memory=memory,
        timeout=timeout,
        region=region,
        jobs=jobs,
        environment=_parse_env(env),
        concurrency=concurrency,
    )
    click.echo(
        f"{action} {config['FunctionArn']}: {config['Runtime']}, {config['MemorySize']} MB, "
        f"{config['Timeout']} s, package {config.get('CodeSize', 0) / 1024:.0f} KiB; "
        f"use --executor lambda://{name}"
    )


@lambda_group.command()
@click.argument("name")
@click.option(
    "--region", default=None, envvar="MRKIT_LAMBDA_REGION", help="AWS region (default: AWS_REGION)."
)
def remove(name: str, region: str | None) -> None:
    """Delete the function NAME."""
    if remove_function(name, region=region):
        click.echo(f"removed function {name}")
    else:
        click.echo(f"no function {name} to remove")
