"""Publishing a job's output, all at once, after every reduce task has committed.

Whoever sees the last reduce commit calls :func:`publish_output` — the in-process driver, or, for
asynchronous executors, the worker that committed last (guarded so that it runs once). Each
partition's winning attempt file is moved to ``part-NNNNN``; ``_SUCCESS`` is written last, so a
reader that sees ``_SUCCESS`` sees every part. A failed job never gets here: it publishes nothing.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

from mrkit.errors import ConfigError, OutputExistsError
from mrkit.model import layout
from mrkit.storage import open_storage
from mrkit.storage.base import Storage


def existing_output(output: Storage) -> list[str]:
    """Keys of a previous result in ``output`` (``part-*`` and ``_SUCCESS`` at the top level)."""
    return [k for k in output.list("") if "/" not in k and (k.startswith("part-") or k == layout.SUCCESS_KEY)]


def input_paths(inputs: Any) -> list[str]:
    """The paths among ``inputs`` (a path, an iterable that may hold paths, or ``{paths: mapper}``);
    records give none."""
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    if isinstance(inputs, dict):  # a mapper per input: the keys are paths, or tuples of them
        return [p for key in inputs for p in input_paths(key if isinstance(key, tuple) else [key])]
    if isinstance(inputs, (list, tuple)):
        return [os.fspath(i) for i in inputs if isinstance(i, (str, os.PathLike))]
    return []


def open_output(url: str, *, overwrite: bool, inputs: Any = ()) -> Storage:
    """Open the output storage at ``url``, refusing one that would clobber or mix with other files.

    * an existing *file* at a local ``url`` (one sentence: it is a file, not a folder);
    * a local output folder that is, or contains, one of the input paths (the job would read its own
      output next time, and ``--overwrite`` would delete input);
    * a previous result (``_SUCCESS``/``part-*``) unless ``overwrite``;
    * a folder holding other files and no mrkit result (say a typo'd ``-o .``) unless ``overwrite``,
      which then adds the result beside them and deletes none of them.

    Returns:
        the output's storage.

    Raises:
        ConfigError: the output is a file, or holds the input.
        OutputExistsError: a previous result or other files are there and ``overwrite`` is False.
    """
    local = "://" not in url
    if local and os.path.isfile(url):
        raise ConfigError(f"output {url} is a file, not a folder: name a new or empty folder for the parts")
    if local:
        out = os.path.realpath(url)
        for path in input_paths(inputs):
            base = path if not glob.has_magic(path) else os.path.dirname(path.split("*")[0].split("?")[0])
            real = os.path.realpath(base or ".")
            if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
                raise ConfigError(
                    f"output {url} holds the input {path}: write the output to a folder outside the inputs"
                )
    output = open_storage(url)
    keys = [k for k in output.list("") if not k.startswith(("_temporary/", "."))]
    previous = existing_output(output)
    if previous and not overwrite:
        raise OutputExistsError(
            f"output {url} already holds a result ({len(previous)} files): "
            "choose another output or pass overwrite=True (--overwrite)"
        )
    if keys and not previous and not overwrite:
        raise OutputExistsError(
            f"output {url} is not empty ({len(keys)} files, no mrkit result): choose a new or empty "
            "folder, or pass overwrite=True (--overwrite) to add the result beside those files"
        )
    return output


def publish_output(
    storage: Storage,
    output: Storage,
    job_id: str,
    n_reduce: int,
    *,
    output_format: str,
    overwrite: bool = False,
    summary: Mapping[str, Any] | None = None,
    phase: str = "reduce",
) -> None:
    """Move every committed reduce part into place, then write ``_SUCCESS``.

    Args:
        storage: the job's intermediate storage (holds the reduce commit manifests).
        output: the output folder.
        job_id, n_reduce: which job and how many parts.
        output_format: recorded in ``_SUCCESS`` for :func:`mrkit.read_output`.
        overwrite: delete a previous result first.
        summary: counters and timings to record in ``_SUCCESS``.
        phase: whose tasks wrote the parts: ``reduce``, or ``map`` for a map-only job, part ``p``
            being map task ``p``'s (:attr:`~mrkit.coordination.plan.JobPlan.output_phase`).
    """
    manifests = []
    for p in range(n_reduce):
        raw = storage.get(layout.commit_key(job_id, layout.task_id(phase, p)))
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
