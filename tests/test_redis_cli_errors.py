"""One sentence, no traceback: the follow-up commands against an unreachable Redis, and ``mrkit
worker redis://…`` where the redis package cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.redis_fixtures import free_port, mrkit_cmd

# Runs the CLI with a meta path finder that refuses to import redis, as if it were not installed.
NO_REDIS = """
import sys

class _NoRedis:
    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _NoRedis())
from mrkit.cli.main import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "command",
    [["status", "some-job"], ["jobs"], ["logs", "some-job"], ["cancel", "some-job"], ["result", "x"]],
)
def test_follow_up_commands_against_an_unreachable_redis_say_one_sentence(command):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    proc = mrkit_cmd(*command, "--executor", url, check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "mrkit: error: cannot reach Redis at redis://:***@127.0.0.1:"
    )
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "command",
    [["worker", "redis://127.0.0.1:1/0", "--burst"], ["status", "x", "--executor", "redis://127.0.0.1:1/0"]],
)
def test_a_missing_redis_package_names_the_extra(command):
    proc = subprocess.run(
        [sys.executable, "-c", NO_REDIS, *command],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mrkit[redis]'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
