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

JOB = '''import mrkit\n\ndef mapper(line):\n    yield line, 1\n'''


@pytest.fixture
def aws(monkeypatch):
    """Dummy credentials and moto's mock of every AWS service, for one test."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA", "AWS_ENDPOINT_URL_IAM", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    with moto.mock_aws():
        yield


@pytest.fixture
def role(aws) -> str:
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "lambda.amazonaws.com"}}]}
    iam = boto3.client("iam", region_name="us-east-1")
    created = iam.create_role(RoleName="mrkit-fn", AssumeRolePolicyDocument=json.dumps(trust))
    return str(created["Role"]["Arn"])


def test_package_holds_the_handler_cloudpickle_and_the_job(tmp_path):
    job = tmp_path / "wordjob.py"
    job.write_text(JOB)
    package = build_package([str(job)])
    names = zipfile.ZipFile(io.BytesIO(package)).namelist()
    assert "mrkit/worker/lambda_handler.py" in names and "mrkit/storage/fsspec.py" in names
    assert "cloudpickle/__init__.py" in names and "wordjob.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("boto3/", "botocore/"))]  # the Lambda runtime has them
    assert build_package([str(job)]) == package  # reproducible: same sources, same bytes
    assert len(package) < 2 << 20


def test_deploy_creates_then_updates_then_remove_deletes(role):
    action, config = deploy_function("mrkit-wc", role, memory=512, timeout=60, region="us-east-1",
                                     environment={"MRKIT_X": "1"})
    assert action == "created"
    client = boto3.client("lambda", region_name="us-east-1")
    live = client.get_function_configuration(FunctionName="mrkit-wc")
    assert (live["Handler"], live["Runtime"], live["MemorySize"], live["Timeout"]) == \
        (HANDLER, runtime_name(), 512, 60)
    assert live["Environment"]["Variables"] == {"MRKIT_X": "1"}
    invoke = client.get_function_event_invoke_config(FunctionName="mrkit-wc")
    assert invoke["MaximumRetryAttempts"] == 2
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == live["FunctionArn"]

    action, config = deploy_function("mrkit-wc", role, memory=2048, timeout=900, region="us-east-1",
                                     concurrency=10)
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
    result = runner.invoke(cli, ["lambda", "deploy", "wc", "--role", role, "--memory", "256", "--timeout",
                                 "30", "--region", "us-east-1", "--zip", str(zip_path)])
    assert result.exit_code == 0, result.output
    assert "created arn:aws:lambda:us-east-1:" in result.output and "--executor lambda://wc" in result.output
    assert zipfile.ZipFile(zip_path).testzip() is None
    result = runner.invoke(cli, ["lambda", "remove", "wc", "--region", "us-east-1"])
    assert result.exit_code == 0 and "removed function wc" in result.output
    result = runner.invoke(cli, ["lambda", "deploy", "wc", "--memory", "64"])
    assert result.exit_code == 2  # usage: --role missing, --memory out of range
