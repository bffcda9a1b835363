"""Publishing a job's output, all at once, after every reduce task has committed.

Whoever sees the last reduce commit calls :func:`publish_output` — the in-process driver, or, for
asynchronous executors, the worker that committed last (guarded so that it runs once). Each
partition's winning attempt file is moved to ``part-NNNNN``; ``_SUCCESS`` is written last, so a
reader that sees ``_SUCCESS`` sees every part. A failed job never gets here: it publishes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mrkit.model import layout
from mrkit.storage.base import Storage


def existing_output(output: Storage) -> list[str]:
    """Keys of a previous result in ``output`` (``part-*`` and ``_SUCCESS`` at the top level)."""
    return [k for k in output.list("") if "/" not in k and (k.startswith("part-") or k == layout.SUCCESS_KEY)]


def publish_output(
    storage: Storage,
    output: Storage,
    job_id: str,
    n_reduce: int,
    *,
    output_format: str,
    overwrite: bool = False,
    summary: Mapping[str, Any] | None = None,
) -> None:
    """Move every committed reduce part into place, then write ``_SUCCESS``.

    Args:
        storage: the job's intermediate storage (holds the reduce commit manifests).
        output: the output folder.
        job_id, n_reduce: which job and how many parts.
        output_format: recorded in ``_SUCCESS`` for :func:`mrkit.read_output`.
        overwrite: delete a previous result first.
        summary: counters and timings to record in ``_SUCCESS``.
    """
    manifests = []
    for p in range(n_reduce):
        raw = storage.get(layout.commit_key(job_id, layout.task_id("reduce", p)))
        manifests.append(json.loads(raw))
    if overwrite:
        for key in existing_output(output):
            output.delete(key)
    for p, manifest in enumerate(manifests):
        output.move(manifest["key"], layout.part_key(p))
    info = {"job_id": job_id, "format": output_format, "parts": n_reduce, **(summary or {})}
    output.put(layout.SUCCESS_KEY, json.dumps(info, indent=1, sort_keys=True).encode())
    output.delete_prefix(f"_temporary/{job_id}/")


def discard_job(storage: Storage, output: Storage | None, job_id: str) -> None:
    """Delete every intermediate and temporary key of ``job_id`` (after success or failure)."""
    storage.delete_prefix(f"{job_id}/")
    if output is not None:
        output.delete_prefix(f"_temporary/{job_id}/")
