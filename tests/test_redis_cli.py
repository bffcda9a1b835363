"""The fleet from the command line: mrkit run/submit/result/status/logs --follow/cancel, --storage,
and ``python -m mrkit --executor redis://…``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    MRKIT,
    WorkerThreads,
    mrkit_cmd,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
)

HERE = os.path.dirname(os.path.abspath(__file__))
WORDCOUNT_REF = os.path.join(HERE, "jobs_for_tests.py") + ":WordCount"
TEXT = ["the cat sat on the mat", "The dog sat", "a b c a b a", "it's 42 o'clock"] * 10

FAILING_JOB = """
import mrkit

def mapper(line):
    if "poison" in line:
        raise ValueError(f"cannot map {line!r}")
    for word in line.split():
        yield word, 1

def reducer(word, counts):
    return sum(counts)

FAILING = mrkit.Job(mapper=mapper, reducer=reducer)
"""


def pairs(stdout: str) -> list[tuple[object, object]]:
    return sorted(
        (json.loads(k), json.loads(v)) for k, v in (line.split("\t") for line in stdout.splitlines())
    )


def first_error(stderr: str) -> str:
    line = next(line for line in stderr.splitlines() if line.startswith("mrkit: error: "))
    return re.sub(r"job \S+-\d{8}-\d{6}-[0-9a-f]{6,}", "job ID", line)


def test_a_raising_mapper_fails_run_and_result_with_the_core_sentence(redis_url, tmp_path, secret_env):  # noqa: F811
    (tmp_path / "failing.py").write_text(FAILING_JOB)
    job_ref = f"{tmp_path / 'failing.py'}:FAILING"
    src = tmp_path / "in.txt"
    src.write_text("fine line\n" * 50 + "poison pill\n" + "ok\n" * 50)
    args = [job_ref, str(src), "-N", "2", "-M", "1"]
    inline = mrkit_cmd("run", *args, "-o", str(tmp_path / "inline"), "--executor", "inline", check=False)
    assert inline.returncode == 1
    expected = first_error(inline.stderr)
    assert "failed after 4 attempts" in expected and re.search(
        r"in\.txt bytes \d+-\d+, record \d+ \(byte \d+\): ValueError: cannot map 'poison pill'", expected
    )

    workers = [start_worker(redis_url, name=f"w{i}", burst=False) for i in range(2)]
    try:
        out = tmp_path / "out"
        run = mrkit_cmd("run", *args, "-o", str(out), "--executor", redis_url, check=False, timeout=120)
        assert run.returncode == 1, run.stderr
        assert first_error(run.stderr) == expected
        assert "Remote traceback" in run.stderr and "ValueError" in run.stderr
        assert not out.exists() or not [n for n in os.listdir(out) if not n.startswith("_temporary")]

        job_id = mrkit_cmd("submit", *args, "-o", str(out), "--executor", redis_url).stdout.strip()
        result = mrkit_cmd(
            "result", job_id, "--wait", "--timeout", "60", "--executor", redis_url, check=False
        )
        assert result.returncode == 1 and result.stdout == ""
        assert first_error(result.stderr) == expected
        status = mrkit_cmd("status", job_id, "--executor", redis_url, check=False)
        assert status.returncode == 1 and "state     failed" in status.stdout
        assert not out.exists() or os.listdir(out) == []
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        errs = [stop_worker(w) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errs


def test_logs_follow_streams_a_running_job_and_ends_with_it(redis_url, tmp_path, secret_env):  # noqa: F811
    job_id = mrkit_cmd(
        "submit", WORDCOUNT_REF, "-N", "1", "-M", "2", "--executor", redis_url, str(_text_file(tmp_path))
    ).stdout.strip()
    follower = subprocess.Popen(
        [*MRKIT, "logs", job_id, "--follow", "--executor", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = None
    try:
        # Still following: the job cannot end before a worker starts.
        wait_for(lambda: mrkit_cmd("logs", job_id, "--executor", redis_url).stdout, what="the first log line")
        assert follower.poll() is None
        worker = start_worker(redis_url, name="solo")
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
        if worker is not None:
            stop_worker(worker)
    assert follower.returncode == 0, err
    assert "submitted: 1 map and 2 reduce tasks" in out and "map-00000 a1 [solo] event: started" in out
    assert out.rstrip().splitlines()[-1].split(" event: ")[1].startswith("done in"), out


def test_cancel_a_running_job_from_the_command_line(redis_url, tmp_path):  # noqa: F811
    job_id = mrkit_cmd(
        "submit", WORDCOUNT_REF, str(_text_file(tmp_path)), "--executor", redis_url
    ).stdout.strip()
    assert mrkit_cmd("cancel", job_id, "--executor", redis_url).stdout.strip() == f"cancelled {job_id}"
    status = mrkit_cmd("status", job_id, "--json", "--executor", redis_url, check=False)
    assert status.returncode == 1 and json.loads(status.stdout)["state"] == "cancelled"
    result = mrkit_cmd("result", job_id, "--executor", redis_url, check=False)
    assert result.returncode == 1 and f"job {job_id} was cancelled" in result.stderr


def test_submit_with_intermediate_data_in_a_shared_folder(redis_url, redis_server, tmp_path, secret_env):  # noqa: F811
    shared = tmp_path / "shared"
    src = _text_file(tmp_path)
    job_id = mrkit_cmd(
        "submit", WORDCOUNT_REF, str(src), "--storage", str(shared), "--executor", redis_url
    ).stdout.strip()
    assert os.listdir(shared / job_id)  # the job's code went to the folder...
    assert not [k for k in redis_server.client().keys("*") if b":data:" in k]  # ...not to Redis
    worker = start_worker(redis_url, name="solo")
    try:
        got = mrkit_cmd("result", job_id, "--wait", "--timeout", "60", "--executor", redis_url)
    finally:
        stop_worker(worker)
    assert pairs(got.stdout) == reference(J.WordCount(), TEXT)
    assert not [k for k in redis_server.client().keys("*") if b":data:" in k]
    assert not os.path.exists(shared / job_id / "map")  # intermediate data deleted at the end


def test_futures_launcher_on_the_fleet(redis_url, tmp_path):  # noqa: F811
    script = tmp_path / "squares.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from mrkit import futures

            offset = int(sys.argv[1])
            print(sum(futures.map(lambda x: x * x + offset, range(100))))
            print(futures.map_reduce(lambda x: x, lambda a, b: a + b, range(10)))
            """
        )
    )
    with WorkerThreads(redis_url, 2):
        proc = subprocess.run(
            [sys.executable, "-m", "mrkit", "--executor", redis_url, str(script), "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(sum(x * x + 1 for x in range(100))), "45"]


def _text_file(tmp_path) -> object:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXT) + "\n")
    return src


def test_run_on_the_fleet_gives_the_reference_output(redis_url, tmp_path):  # noqa: F811
    with WorkerThreads(redis_url, 2):
        got = mrkit_cmd(
            "run",
            WORDCOUNT_REF,
            str(_text_file(tmp_path)),
            "-N",
            "2",
            "-M",
            "2",
            "--executor",
            redis_url,
            timeout=120,
        )
    assert pairs(got.stdout) == reference(J.WordCount(), TEXT)
