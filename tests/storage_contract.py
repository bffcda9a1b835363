"""The storage contract: every backend runs these tests (STYLE 31).

Subclass :class:`StorageContract` in a test module and provide a ``storage`` fixture that yields a
fresh, empty backend; pytest collects the inherited tests for it.
"""

from __future__ import annotations

import threading

import pytest

from mrkit.errors import UnsafeKeyError


class StorageContract:
    """Inherit and provide a ``storage`` fixture."""

    def test_put_get_size_exists(self, storage):
        storage.put("a/b.bin", b"hello")
        assert storage.get("a/b.bin") == b"hello"
        assert storage.size("a/b.bin") == 5
        assert storage.exists("a/b.bin")
        assert not storage.exists("a/c.bin")

    def test_missing_key_raises_file_not_found(self, storage):
        with pytest.raises(FileNotFoundError):
            storage.get("nope")
        with pytest.raises(FileNotFoundError):
            storage.size("nope")
        assert storage.get_or_none("nope") is None

    def test_ranged_reads(self, storage):
        storage.put("r", bytes(range(256)) * 100)
        with storage.open_read("r", 10, 5) as f:
            assert f.read() == bytes(range(10, 15))
        with storage.open_read("r", 25590) as f:
            assert f.read() == bytes(range(246, 256))
        with storage.open_read("r", 0, 300) as f:
            assert f.read(7) == bytes(range(7))
            assert len(f.read()) == 293

    def test_write_is_invisible_until_close_and_discarded_on_error(self, storage):
        f = storage.open_write("w")
        f.write(b"part")
        assert not storage.exists("w")
        f.close()
        assert storage.get("w") == b"part"
        with pytest.raises(RuntimeError), storage.open_write("x") as g:
            g.write(b"junk")
            raise RuntimeError("boom")
        assert not storage.exists("x")
        assert storage.get("w") == b"part"

    def test_put_replaces(self, storage):
        storage.put("k", b"1")
        storage.put("k", b"22")
        assert storage.get("k") == b"22"

    def test_put_if_absent_first_writer_wins(self, storage):
        assert storage.put_if_absent("c/COMMIT", b"first") is True
        assert storage.put_if_absent("c/COMMIT", b"second") is False
        assert storage.get("c/COMMIT") == b"first"

    def test_put_if_absent_is_atomic_under_contention(self, storage):
        winners = []
        barrier = threading.Barrier(8)

        def attempt(i):
            barrier.wait()
            if storage.put_if_absent("race/COMMIT", str(i).encode()):
                winners.append(i)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert storage.get("race/COMMIT") == str(winners[0]).encode()

    def test_list_and_delete(self, storage):
        for key in ("j/map/a", "j/map/b", "j/red/c", "k/x"):
            storage.put(key, b"x")
        assert sorted(storage.list("j/map/")) == ["j/map/a", "j/map/b"]
        assert sorted(storage.list("j/")) == ["j/map/a", "j/map/b", "j/red/c"]
        storage.delete("j/map/a")
        storage.delete("j/map/a")  # deleting a missing key is fine
        assert sorted(storage.list("j/")) == ["j/map/b", "j/red/c"]
        assert storage.delete_prefix("j/") == 2
        assert list(storage.list("j/")) == []

    def test_move(self, storage):
        storage.put("src/p", b"data")
        storage.move("src/p", "dst/p")
        assert storage.get("dst/p") == b"data"
        assert not storage.exists("src/p")

    @pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a/../../b", "", "a\\b"])
    def test_unsafe_keys_are_refused(self, storage, key):
        with pytest.raises(UnsafeKeyError):
            storage.put(key, b"x")
        with pytest.raises(UnsafeKeyError):
            storage.put_if_absent(key, b"x")

    def test_binary_data_round_trips(self, storage):
        data = bytes(range(256)) * 4096  # 1 MiB, every byte value
        with storage.open_write("big") as f:
            f.write(data[: len(data) // 2])
            f.write(data[len(data) // 2 :])
        assert storage.get("big") == data
