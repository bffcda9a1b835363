"""A map task's input when several splits are packed into it: one split's reader after another.

The default plan packs small files into one map task (:func:`mrkit.data.splits.pack_splits`). The
task reads them in order through :class:`PackedReader`, which offers what the map side needs of a
:class:`~mrkit.data.readers.SplitReader` (``batches()``, ``bytes_read``, ``skipped``) over all of
them: each batch still locates its records in its own file, so an error names the file and byte
range it came from, and ``on_split`` lets the caller say which split is being read
(``mrkit.context().input``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from mrkit.data.readers import RecordBatch, SplitReader, open_split
from mrkit.model.task import InputSplit


class PackedReader:
    """Read ``splits`` in order, opening each when the previous one is finished.

    Args:
        splits: the task's splits (at least one).
        on_split: called with each split just before its first batch is read.
    """

    def __init__(self, splits: Sequence[InputSplit], on_split: Callable[[InputSplit], None]) -> None:
        self.splits = tuple(splits)
        self._on_split = on_split
        self._finished_bytes = 0
        self._finished_skipped = 0
        self._current: SplitReader | None = None

    @property
    def bytes_read(self) -> int:
        """Input bytes read so far, over every split."""
        return self._finished_bytes + (self._current.bytes_read if self._current is not None else 0)

    @property
    def skipped(self) -> int:
        """Records dropped so far under ``errors="skip"``, over every split."""
        return self._finished_skipped + (self._current.skipped if self._current is not None else 0)

    def batches(self) -> Iterator[RecordBatch]:
        """Every split's batches, in order (the errors of :meth:`SplitReader.batches`)."""
        for split in self.splits:
            reader = open_split(split)
            self._current = reader
            self._on_split(split)
            try:
                yield from reader.batches()
            finally:
                reader.close()
                self._finished_bytes += reader.bytes_read
                self._finished_skipped += reader.skipped
                self._current = None
