"""The object-store backend against a real S3-protocol server (moto's, on 127.0.0.1).

The shared contract suite runs twice: through boto3 (the default for ``s3://``) and through fsspec
(s3fs), the path every other fsspec URL takes. Then what the contract cannot show: listings past
one page, ranged reads in several windows, reads cut mid-body by a faulty proxy (retried, or failing
loudly — never short), conditional writes whose reply was lost, endpoints from options.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest

import mrkit
import mrkit.storage.fsspec as fsspec_storage
import mrkit.storage.objects as storage_objects
from mrkit.errors import ConfigError, MissingExtra, StorageError
from mrkit.storage import open_storage
from mrkit.storage.fsspec import FsspecStorage
from tests.s3_fixtures import *  # noqa: F403 - the moto_server, s3_bucket and s3_url fixtures
from tests.s3_fixtures import FaultProxy, patched_env
from tests.storage_contract import StorageContract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestS3Storage(StorageContract):
    @pytest.fixture
    def storage(self, s3_url):
        return open_storage(s3_url)


# s3fs (through aiobotocore/aiohttp) closes its client session from a finaliser and, on some
# versions, warns about it; that is s3fs's business, not a defect of this backend.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
class TestS3StorageThroughFsspec(StorageContract):
    @pytest.fixture
    def storage(self, s3_url, moto_server):
        pytest.importorskip("s3fs")
        return FsspecStorage.from_url(
            s3_url, driver="fsspec", client_kwargs={"endpoint_url": moto_server.endpoint}
        )


def test_url_forms_and_options(s3_bucket):
    assert open_storage(f"s3://{s3_bucket}").url == f"s3://{s3_bucket}"
    assert open_storage(f"s3://{s3_bucket}/a/b/").url == f"s3://{s3_bucket}/a/b"
    with pytest.raises(ConfigError, match="unknown s3 storage option"):
        open_storage(f"s3://{s3_bucket}", endpoint="x")
    with pytest.raises(ConfigError, match="bucket"):
        open_storage("s3:///nobucket")


def test_prefixes_keep_stores_apart(s3_bucket):
    a, b, whole = (open_storage(f"s3://{s3_bucket}/{p}") for p in ("a", "b", ""))
    a.put("k", b"A")
    b.put("k", b"B")
    assert (a.get("k"), b.get("k")) == (b"A", b"B")
    assert sorted(whole.list("")) == ["a/k", "b/k"]
    assert list(open_storage(f"s3://{s3_bucket}#a/").list("")) == ["k"]


def test_listing_paginates_past_1000_objects(s3_url):
    store = open_storage(s3_url)
    keys = [f"many/obj-{i:05d}" for i in range(1050)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, b"x"), keys))
    store.put("other/x", b"x")
    assert sorted(store.list("many/")) == keys  # S3 returns at most 1,000 keys a page
    assert store.delete_prefix("many/") == 1050
    assert list(store.list("many/")) == []
    assert list(store.list("")) == ["other/x"]


def test_ranged_reads_span_several_requests(s3_url, monkeypatch):
    monkeypatch.setattr(fsspec_storage, "WINDOW", 1000)  # one ranged GET per 1,000 bytes
    store = open_storage(s3_url)
    data = os.urandom(10_500)
    store.put("big", data)
    with store.open_read("big", 123, 7000) as f:
        assert f.read() == data[123:7123]
    with store.open_read("big", 9000) as f:
        assert f.read() == data[9000:]
    with store.open_read("big", 20_000) as f:  # past the end: empty, like a file
        assert f.read() == b""
    store.put("empty", b"")
    assert store.get("empty") == b""
    with pytest.raises(FileNotFoundError):
        store.open_read("missing", 0, 10)


def test_ranged_read_cut_mid_body_is_resumed(s3_url, moto_server):
    store = open_storage(s3_url)
    data = os.urandom(3 << 20)
    store.put("big", data)
    proxy = FaultProxy(moto_server.endpoint, after=200_000, cuts=3)
    try:
        cut = open_storage(s3_url, endpoint_url=proxy.endpoint)
        with cut.open_read("big", 1000, 2 << 20) as f:
            assert f.read() == data[1000 : 1000 + (2 << 20)]
        assert proxy.cut_count == 3  # three responses were cut, and every byte still arrived
    finally:
        proxy.stop()


def test_ranged_read_that_keeps_failing_raises_instead_of_returning_less(s3_url, moto_server):
    store = open_storage(s3_url)
    data = os.urandom(1 << 20)
    store.put("big", data)
    # Every response is cut inside its headers: no request makes progress. (A cut that delivers some
    # bytes counts as progress and resets the retry budget, so a slow, flaky link still finishes.)
    proxy = FaultProxy(moto_server.endpoint, after=10, cuts=-1)
    try:
        cut = open_storage(s3_url, endpoint_url=proxy.endpoint, read_retries=2, max_attempts=1)
        with pytest.raises(StorageError, match=r"giving up after 2 retries"), cut.open_read("big") as f:
            f.read()
    finally:
        proxy.stop()


def test_put_if_absent_survives_a_lost_reply(s3_url):
    store = open_storage(s3_url)
    # As if our first PUT landed but its reply was lost, and botocore's retry met 412.
    store.put("c/COMMIT", b"attempt 1")
    assert store.put_if_absent("c/COMMIT", b"attempt 1") is True
    assert store.put_if_absent("c/COMMIT", b"attempt 2") is False


def test_large_writes_spool_to_disk_and_upload_whole(s3_url, monkeypatch):
    monkeypatch.setattr(fsspec_storage, "SPOOL", 1 << 16)
    store = open_storage(s3_url)
    data = os.urandom(1 << 20)
    with store.open_write("w") as f:
        for i in range(0, len(data), 4096):
            f.write(data[i : i + 4096])
        assert not store.exists("w")
    assert store.get("w") == data


def test_server_side_move_between_prefixes(s3_bucket):
    src, dst = open_storage(f"s3://{s3_bucket}/src"), open_storage(f"s3://{s3_bucket}/dst")
    src.put("p", b"data")
    src.move("p", "q", target=dst)
    assert dst.get("q") == b"data"
    assert not src.exists("p")


def test_endpoint_from_options_instead_of_environment(s3_bucket, moto_server):
    with patched_env({"AWS_ENDPOINT_URL_S3": "", "AWS_ENDPOINT_URL": ""}):
        store = open_storage(f"s3://{s3_bucket}/opt", endpoint_url=moto_server.endpoint)
        store.put("k", b"v")
    assert open_storage(f"s3://{s3_bucket}/opt").get("k") == b"v"


def test_missing_boto3_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3.session", None)
    monkeypatch.setattr(storage_objects, "_CLIENTS", {})
    with pytest.raises(MissingExtra, match=r"mrkit\[s3\]"):
        open_storage("s3://bucket/x")


def test_import_mrkit_loads_no_object_store_package():
    code = (
        "import sys, mrkit, mrkit.storage, mrkit.execution.base; "
        "bad = [m for m in ('boto3', 'botocore', 'fsspec', 's3fs') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_ended_reads_start_small_and_grow(s3_url, monkeypatch):
    # The input reader opens an open-ended read just to finish a split's last line: ask little first.
    monkeypatch.setattr(fsspec_storage, "FIRST_OPEN_WINDOW", 256)
    monkeypatch.setattr(fsspec_storage, "WINDOW", 1024)
    store = open_storage(s3_url)
    data = os.urandom(5000)
    store.put("o", data)
    ranges: list[str] = []
    client = store.objects.client

    def record(request, **_kwargs):
        value = request.headers.get("Range")
        ranges.append(value.decode() if isinstance(value, bytes) else str(value))

    client.meta.events.register("before-send.s3.GetObject", record)
    try:
        with store.open_read("o", 100) as f:
            assert f.read() == data[100:]
    finally:
        client.meta.events.unregister("before-send.s3.GetObject", record)
    assert ranges == [
        "bytes=100-355",
        "bytes=356-867",
        "bytes=868-1891",
        "bytes=1892-2915",
        "bytes=2916-3939",
        "bytes=3940-4963",
        "bytes=4964-5987",
    ]


def test_commit_is_one_conditional_put_decided_by_the_server(s3_url):
    """put_if_absent sends PutObject with If-None-Match: * and nothing before it: the server, not a
    client-side read, decides the winner (moto answers 412 as S3 does; S3 makes it atomic)."""
    store = open_storage(s3_url)
    client = store.objects.client
    wire: list[tuple[str, str | None, int | None]] = []

    def before(request, **_kwargs):
        header = request.headers.get("If-None-Match")
        wire.append((request.method, header.decode() if isinstance(header, bytes) else header, None))

    def after(http_response, **_kwargs):
        method, header, _ = wire[-1]
        wire[-1] = (method, header, http_response.status_code)

    client.meta.events.register("before-send.s3", before)
    client.meta.events.register("after-call.s3", after)
    try:
        assert store.put_if_absent("c/COMMIT", b"attempt 1") is True
        assert wire == [("PUT", "*", 200)]
        wire.clear()
        assert store.put_if_absent("c/COMMIT", b"attempt 2") is False
        # Refused by the server; then one read, only to tell a lost reply to our own PUT from a loss.
        assert wire == [("PUT", "*", 412), ("GET", None, 200)]
    finally:
        client.meta.events.unregister("before-send.s3", before)
        client.meta.events.unregister("after-call.s3", after)
    assert store.get("c/COMMIT") == b"attempt 1"


def test_map_splits_of_an_s3_object_are_read_by_ranged_gets(s3_bucket):
    """What a map task reads: its split, plus at most 64 KiB to finish its last line (the first window
    of an open-ended read was 1 MiB, all of it transferred for the few bytes of one line)."""
    from mrkit.data.readers import open_split
    from mrkit.data.splits import plan_splits

    lines = [f"line {i} " + "x" * (i % 150) for i in range(30_000)]
    data = ("\n".join(lines) + "\n").encode()  # ~2.5 MB: more than 1 MiB after each split but the last
    open_storage(f"s3://{s3_bucket}").put("in/big.txt", data)
    splits = plan_splits(f"s3://{s3_bucket}/in/*.txt", 4, min_split_bytes=1024)
    assert len(splits) == 4
    client = open_storage(f"s3://{s3_bucket}").objects.client  # the per-process client readers share
    ranges: list[tuple[int, int]] = []

    def record(request, **_kwargs):
        value = request.headers.get("Range")
        assert value is not None, "a GET without Range would fetch the whole object"
        first, last = (
            (value.decode() if isinstance(value, bytes) else value).removeprefix("bytes=").split("-")
        )
        ranges.append((int(first), int(last)))

    client.meta.events.register("before-send.s3.GetObject", record)
    try:
        got = []
        for split in splits:
            before = len(ranges)
            got += [r for batch in open_split(split).batches() for r in batch.records]
            asked = sum(last + 1 - first for first, last in ranges[before:])
            assert split.length <= asked <= split.length + (64 << 10) + 1
    finally:
        client.meta.events.unregister("before-send.s3.GetObject", record)
    assert got == lines  # every record once, in order


def test_storage_options_on_the_command_line_reach_the_driver_and_its_workers(
    moto_server, s3_bucket, tmp_path
):
    # No AWS_ENDPOINT_URL* in the environment: the endpoint comes only from --storage-options, and
    # the worker processes (which open the input splits and write the shuffle) must see it too.
    storage = open_storage(f"s3://{s3_bucket}", endpoint_url=moto_server.endpoint)
    storage.put("in/a.txt", b"b a\na\n")
    storage.put("in/b.txt", b"c a\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env.pop("MRKIT_STORAGE_OPTIONS", None)
    options = json.dumps({"endpoint_url": moto_server.endpoint})
    args = [
        sys.executable,
        "-m",
        "mrkit",
        "run",
        "tests/jobs_for_tests.py:WordCount",
        f"s3://{s3_bucket}/in/*.txt",
    ]
    args += ["-o", f"s3://{s3_bucket}/out", "--storage", f"s3://{s3_bucket}/tmp", "--workers", "2"]
    done = subprocess.run(
        [*args, "--storage-options", options], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    with patched_env({"MRKIT_STORAGE_OPTIONS": options}):
        assert dict(mrkit.read_output(f"s3://{s3_bucket}/out")) == {"a": 3, "b": 1, "c": 1}
    bad = subprocess.run(
        [*args, "--storage-options", "[1]"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert bad.returncode == 2 and "--storage-options must be a JSON object" in bad.stderr


def test_forked_workers_do_not_share_the_read_retry_jitter():
    # Workers forked from one process (the processes executor's fast start, a fork server) would
    # otherwise all back off by the same "random" delays. Forked in a fresh interpreter: this
    # test process has threads.
    script = (
        "import os, sys\n"
        "from mrkit.storage.fsspec import _JITTER\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(w, repr(_JITTER.random()).encode()); os._exit(0)\n"
        "os.close(w); os.wait()\n"
        "print(repr(_JITTER.random()), os.read(r, 100).decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    parent, child = out.stdout.split()
    assert parent != child
