"""``mrkit lambda deploy/remove`` against moto's in-process AWS mock (``moto.mock_aws``).

moto records the function (code, configuration, invoke configuration); it cannot *run* it here
(that needs Docker and the Lambda runtime image), so nothing in this file invokes it — the handler
itself is tested in tests/test_lambda_handler.py.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from click.testing import CliRunner

from mrkit.cli.lambda_cmd import HANDLER, build_package, deploy_function, remove_function, runtime_name
from mrkit.cli.main import cli

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

JOB = """import mrkit\n\ndef mapper(line):\n    yield line, 1\n"""


@pytest.fixture
def aws(monkeypatch):
    """Dummy credentials and moto's mock of every AWS service, for one test."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA", "AWS_ENDPOINT_URL_IAM", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    with moto.mock_aws():
        yield


@pytest.fixture
def role(aws) -> str:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "lambda.amazonaws.com"}}
        ],
    }
    iam = boto3.client("iam", region_name="us-east-1")
    created = iam.create_role(RoleName="mrkit-fn", AssumeRolePolicyDocument=json.dumps(trust))
    return str(created["Role"]["Arn"])


def test_package_holds_the_handler_cloudpickle_and_the_job(tmp_path):
    job = tmp_path / "wordjob.py"
    job.write_text(JOB)
    package = build_package([str(job)])
    names = zipfile.ZipFile(io.BytesIO(package)).namelist()
    assert "mrkit/backends/aws_lambda/handler.py" in names and "mrkit/storage/fsspec.py" in names
    assert "cloudpickle/__init__.py" in names and "wordjob.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("boto3/", "botocore/"))]  # the Lambda runtime has them
    assert build_package([str(job)]) == package  # reproducible: same sources, same bytes
    assert len(package) < 2 << 20


def test_deploy_creates_then_updates_then_remove_deletes(role):
    action, config = deploy_function(
        "mrkit-wc", role, memory=512, timeout=60, region="us-east-1", environment={"MRKIT_X": "1"}
    )
    assert action == "created"
    client = boto3.client("lambda", region_name="us-east-1")
    live = client.get_function_configuration(FunctionName="mrkit-wc")
    assert (live["Handler"], live["Runtime"], live["MemorySize"], live["Timeout"]) == (
        HANDLER,
        runtime_name(),
        512,
        60,
    )
    assert live["Environment"]["Variables"] == {"MRKIT_X": "1"}
    invoke = client.get_function_event_invoke_config(FunctionName="mrkit-wc")
    assert invoke["MaximumRetryAttempts"] == 2
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == live["FunctionArn"]

    action, config = deploy_function(
        "mrkit-wc", role, memory=2048, timeout=900, region="us-east-1", concurrency=10
    )
    assert action == "updated"
    live = client.get_function_configuration(FunctionName="mrkit-wc")
    assert (live["MemorySize"], live["Timeout"]) == (2048, 900)
    assert client.get_function_concurrency(FunctionName="mrkit-wc")["ReservedConcurrentExecutions"] == 10

    assert remove_function("mrkit-wc", region="us-east-1") is True
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function(FunctionName="mrkit-wc")
    assert remove_function("mrkit-wc", region="us-east-1") is False


def test_cli_deploy_and_remove(role, tmp_path):
    runner = CliRunner()
    zip_path = tmp_path / "fn.zip"
    result = runner.invoke(
        cli,
        [
            "lambda",
            "deploy",
            "wc",
            "--role",
            role,
            "--memory",
            "256",
            "--timeout",
            "30",
            "--region",
            "us-east-1",
            "--zip",
            str(zip_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "created arn:aws:lambda:us-east-1:" in result.output and "--executor lambda://wc" in result.output
    assert zipfile.ZipFile(zip_path).testzip() is None
    result = runner.invoke(cli, ["lambda", "remove", "wc", "--region", "us-east-1"])
    assert result.exit_code == 0 and "removed function wc" in result.output
    result = runner.invoke(cli, ["lambda", "deploy", "wc", "--memory", "64"])
    assert result.exit_code == 2  # usage: --role missing, --memory out of range


def test_package_runs_the_handler_without_an_installed_mrkit(tmp_path):
    """What the Lambda runtime would do: import the handler from the zip, with only boto3 & co. beside it."""
    import subprocess
    import sys
    import sysconfig

    package = tmp_path / "fn.zip"
    package.write_bytes(build_package())
    code = f"""
import sys, json, uuid
sys.path[:0] = [{str(package)!r}]
sys.path.append({sysconfig.get_paths()["purelib"]!r})  # boto3 & co. (the Lambda runtime has them)
import mrkit
from mrkit.coordination.plan import RetryPolicy, build_plan, store_records
from mrkit.backends.aws_lambda.executor import build_event
from mrkit.model.task import TaskResult, TaskSettings
from mrkit.storage import open_storage
from mrkit.backends.aws_lambda.handler import handler
from mrkit.backends.aws_lambda.emulator import LambdaContext
assert mrkit.__file__.startswith({str(package)!r}), mrkit.__file__
storage = open_storage({str(tmp_path / "store")!r})
job = mrkit.Job(mapper=lambda line: [(w, 1) for w in line.split()], reducer=lambda k, vs: sum(vs))
splits = store_records(storage, "j1", ["a b", "b"], 1)
plan = build_plan(job, splits, job_id="j1", storage=storage, output_url=storage.url + "#out/", n_reduce=1,
                  settings=TaskSettings(), policy=RetryPolicy())
ctx = LambdaContext(function_name="f", memory_limit_in_mb=128, aws_request_id=str(uuid.uuid4()),
                    deadline=1e12)
[raw] = handler(build_event(list(plan.map_specs), storage.url), ctx)["results"]
assert TaskResult.decode(raw).committed
print("click" in sys.modules, sorted(m for m in ("boto3", "fsspec", "s3fs") if m in sys.modules))
"""
    # -S: no site-packages, hence no installed (editable) mrkit; -I: ignore PYTHON* variables.
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "[]"]  # neither the CLI nor an object-store client was needed
