"""RedisStorage against a real redis-server: the storage contract plus Redis-specific behaviour."""

from __future__ import annotations

import pytest

from mrkit.errors import UnsafeKeyError
from mrkit.storage import open_storage
from mrkit.storage.redis import RedisStorage, RedisURL, data_key, redact, storage_key
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401 - fixtures
from tests.storage_contract import StorageContract


class TestRedisStorage(StorageContract):
    @pytest.fixture
    def storage(self, redis_url):  # noqa: F811
        return RedisStorage(redis_url)


def test_keys_live_under_the_job_hash_tag(redis_url, redis_server):  # noqa: F811
    store = open_storage(redis_url)
    store.put("job-1/map/map-00000/COMMIT", b"x")
    assert redis_server.client().keys("*") == [b"mrkit:{job-1}:data:map/map-00000/COMMIT"]
    assert storage_key(data_key("solo")) == "solo"
    assert storage_key("mrkit:{job-1}:state") is None
    with pytest.raises(UnsafeKeyError):
        store.put("a{b}/c", b"x")


def test_list_escapes_glob_characters_and_partial_first_segments(redis_url):  # noqa: F811
    store = RedisStorage(redis_url)
    for key in ("j*b/x", "jab/x", "jobA/x", "jobB/y/z", "other/q"):
        store.put(key, b"1")
    assert list(store.list("j*b/")) == ["j*b/x"]
    assert sorted(store.list("job")) == ["jobA/x", "jobB/y/z"]
    assert sorted(store.list("")) == ["j*b/x", "jab/x", "jobA/x", "jobB/y/z", "other/q"]


def test_large_ranged_reads_stream_in_blocks(redis_url):  # noqa: F811
    store = RedisStorage(redis_url)
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: several GETRANGE blocks
    store.put("big/x", data)
    with store.open_read("big/x", 3, len(data) - 10) as f:
        head = f.read(5)
        rest = f.read()
    assert head + rest == data[3:-7]
    with store.open_read("big/x", 9 << 20) as f:
        assert f.read() == data[9 << 20 :]


def test_move_missing_raises(redis_url):  # noqa: F811
    with pytest.raises(FileNotFoundError):
        RedisStorage(redis_url).move("a/b", "a/c")


def test_url_options_and_redaction():
    parsed = RedisURL.parse("rediss://u:pw@example.org:6380/2?lease=3&ssl_cert_reqs=none")
    assert parsed.url == "rediss://u:pw@example.org:6380/2?ssl_cert_reqs=none"
    assert parsed.number("lease", 30) == 3.0 and parsed.host == "example.org"
    assert redact(parsed.url) == "rediss://u:***@example.org:6380/2?ssl_cert_reqs=none"
