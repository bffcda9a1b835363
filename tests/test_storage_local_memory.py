"""The storage contract against the local-folder, in-memory and prefixed backends."""

from __future__ import annotations

import os
import uuid

import pytest

from mrkit.errors import UnsafeKeyError
from mrkit.storage import LocalStorage, MemoryStorage, open_storage
from mrkit.storage.prefixed import PrefixedStorage
from tests.storage_contract import StorageContract


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return LocalStorage(tmp_path / "store")

    def test_symlink_escape_is_refused(self, tmp_path):
        store = LocalStorage(tmp_path / "store")
        os.symlink(tmp_path, tmp_path / "store" / "link")
        with pytest.raises(UnsafeKeyError):
            store.put("link/evil", b"x")

    def test_delete_prefix_removes_half_written_files_of_killed_writers(self, tmp_path):
        # A worker SIGKILLed mid-write leaves `<key>.tmp-<id>`; discarding the attempt must not leave
        # it (it used to stay in out/_temporary/ after a successful job).
        store = LocalStorage(tmp_path / "store")
        store.put("_temporary/job/r1/a1/done", b"x")
        half = tmp_path / "store" / "_temporary" / "job" / "r1" / "a2" / "part-00001.tmp-0123abcd"
        half.parent.mkdir(parents=True)
        half.write_bytes(b"half")  # what open_write() leaves when its process dies before close()
        store.put("_temporary/other/keep", b"y")
        assert store.delete_prefix("_temporary/job/") == 1
        assert not (tmp_path / "store" / "_temporary" / "job").exists()
        assert list(store.list()) == ["_temporary/other/keep"]


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self):
        store = MemoryStorage(f"t-{uuid.uuid4().hex}")
        yield store
        store.drop()


class TestPrefixedStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return PrefixedStorage(LocalStorage(tmp_path / "store"), "job-1/out/")


def test_open_storage_by_url(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    assert isinstance(open_storage("memory://x"), MemoryStorage)
    prefixed = open_storage(f"{tmp_path}#p/")
    prefixed.put("k", b"v")
    assert (tmp_path / "p" / "k").read_bytes() == b"v"
