"""Resume: run a failed or interrupted job again under the same id, re-using what it committed.

A job whose id the user chose (``job_id=``, ``--job-id``) and whose intermediate data lives in a
place that outlives the driver (``storage=``, the executor's own storage such as Redis, or, for
local executors, the output folder's ``_temporary/`` folder) is *resumable*: when it fails or is
interrupted (Ctrl-C, or the driver SIGKILLed) its state is kept, and ``resume=True`` (``--resume``)
later re-uses every committed task attempt and runs only the rest.

What is kept, in the job's intermediate storage (beside the keys of :mod:`mrkit.model.layout`)::

    {job}/plan.json         the plan's identity, written by the first driver: the job code's
                            fingerprint, the splits (and the size and modification time of each
                            local input file), n_map, n_reduce, the output and its format
    {job}/epoch/{n:08d}     one per driver incarnation (:mod:`mrkit.coordination.fencing`)

A resume refuses, with one sentence, when nothing of the job is found (no ``plan.json``: it never
ran there, or it finished and its state was removed) and when the new plan differs from the stored
one. A committed task is re-used only when the files its commit manifest names still exist; a
commit whose files are gone is deleted and the task runs again.

Clean-up: a successful run (fresh or resumed) deletes the job's state; a fresh run (no resume) with
the same id first deletes what an earlier run of that id left; otherwise the state stays until the
user deletes it (``OUT/_temporary/JOB/``, or the ``JOB/`` keys of ``storage=``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from mrkit.coordination.plan import JobPlan
from mrkit.errors import ConfigError
from mrkit.model import layout
from mrkit.model.task import InputSplit, TaskKind, TaskSpec
from mrkit.storage.base import Storage

# cloudpickle names each class it pickles by value with a random uuid4 hex (its class tracker id),
# so two pickles of the same code differ there; the fingerprint leaves such strings out.
_TRACKER_ID = re.compile(r"[0-9a-f]{32}")
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


class ResumeRefused(ConfigError):
    """Raised when a job cannot be resumed: nothing of it was found, or its plan changed."""


def plan_key(job_id: str) -> str:
    """``{job}/plan.json``."""
    return f"{job_id}/plan.json"


def code_fingerprint(code: bytes) -> str:
    """SHA-256 of what a pickled job says, not of how pickle happened to lay it out.

    The same job pickled twice can differ in its bytes: cloudpickle's random class-tracker ids, and
    pickle's memo, which refers back to an equal string when it is the *same object* (a code
    object's file name after a worker in this process loaded the job is an equal, distinct string).
    So the fingerprint hashes the opcode stream with memo references replaced by the values they
    refer to and tracker ids left out; any change to the code, its parameters or the local modules
    shipped with it still changes the fingerprint.
    """
    import pickletools  # only resumable jobs fingerprint their code: not on every run's import path

    digest = hashlib.sha256()
    memo: dict[int, object] = {}
    last: object = None
    for op, arg, _pos in pickletools.genops(code):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "MEMOIZE" or name in _MEMO_PUT:
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = last  # type: ignore[arg-type]
            continue
        if name in _MEMO_GET:
            last = memo.get(int(arg))  # type: ignore[arg-type]
            token: object = _token(last) if last is not None else ("ref",)
        elif isinstance(arg, (str, bytes, int, float)) and not isinstance(arg, bool):
            last = arg
            token = _token(arg)
        else:
            last = None
            token = (name, arg)
        digest.update(repr(token).encode())
    return digest.hexdigest()


def _token(value: object) -> tuple[object, ...]:
    if isinstance(value, str) and _TRACKER_ID.fullmatch(value):
        return ("tracker",)
    return ("value", value)


def _split_identity(split: InputSplit) -> dict[str, Any]:
    entry = split.to_dict()
    if "://" not in split.uri and "#" not in split.uri and os.path.isfile(split.uri):
        st = os.stat(split.uri)
        entry["file"] = [st.st_size, st.st_mtime_ns]
    return entry


def plan_identity(plan: JobPlan, code: bytes) -> dict[str, Any]:
    """What must be equal for a resumed run to re-use the committed tasks of an earlier one."""
    identity = {
        "job_id": plan.job_id,
        "code": code_fingerprint(code),
        "n_map": plan.n_map,
        "n_reduce": plan.n_reduce,
        "output": plan.output_url,
        "format": plan.output_format,
        "splits": [_split_identity(piece) for s in plan.map_specs for piece in s.pieces],
    }
    # Through JSON and back, so that it compares equal to the stored copy (tuples become lists).
    result: dict[str, Any] = json.loads(json.dumps(identity, sort_keys=True))
    return result


def save_plan(storage: Storage, plan: JobPlan, code: bytes) -> None:
    """Record ``plan``'s identity for a later resume (a fresh run overwrites an older record)."""
    storage.put(plan_key(plan.job_id), json.dumps(plan_identity(plan, code), sort_keys=True).encode())


def stored_plan(storage: Storage, job_id: str, where: str) -> dict[str, Any]:
    """The identity recorded by the first driver of ``job_id``.

    Raises:
        ResumeRefused: nothing of the job is in ``storage`` (``where`` names it in the message).
    """
    raw = storage.get_or_none(plan_key(job_id))
    if raw is None:
        raise ResumeRefused(
            f"cannot resume job {job_id}: nothing of it was found in {where} (it never ran with this "
            "output and storage, or it finished and its state was removed); run it without resume"
        )
    stored: dict[str, Any] = json.loads(raw)
    return stored


def stored_code(storage: Storage, job_id: str) -> bytes | None:
    """The pickled job the earlier driver stored, or None."""
    return storage.get_or_none(layout.job_key(job_id))


def check_code(stored: dict[str, Any], code: bytes, job_id: str) -> None:
    """Refuse a resume whose job code differs from the stored job's.

    Raises:
        ResumeRefused: the code fingerprints differ.
    """
    now = code_fingerprint(code)
    if stored.get("code") != now:
        raise ResumeRefused(
            f"cannot resume job {job_id}: its code differs from the stored job's (job code hash "
            f"{now[:12]}, stored {str(stored.get('code'))[:12]}); run it without resume, or under another id"
        )


def check_plan(stored: dict[str, Any], plan: JobPlan, code: bytes) -> None:
    """Refuse a resume whose plan differs from the stored one, naming the first difference.

    Raises:
        ResumeRefused: the inputs, their splits, n_reduce, the output or the code differ.
    """
    now = plan_identity(plan, code)
    job = plan.job_id
    check_code(stored, code, job)
    for name, what in (("n_reduce", "n_reduce"), ("output", "output"), ("format", "output format")):
        if stored.get(name) != now[name]:
            raise ResumeRefused(
                f"cannot resume job {job}: its {what} is {now[name]!r}, the stored plan's is "
                f"{stored.get(name)!r}; run it without resume, or with the same options"
            )
    old, new = stored.get("splits", []), now["splits"]
    if old != new:
        index = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))
        )
        detail = (
            f"{len(new)} splits now, {len(old)} in the stored plan"
            if len(old) != len(new)
            else f"split {index} is {_describe(new[index])}, was {_describe(old[index])}"
        )
        raise ResumeRefused(
            f"cannot resume job {job}: its inputs differ from the stored plan's ({detail}); run it "
            "without resume, or with the same inputs and n_map"
        )


def _describe(entry: dict[str, Any]) -> str:
    split = InputSplit.from_dict({k: v for k, v in entry.items() if k != "file"})
    size = f" (size {entry['file'][0]}, modified {entry['file'][1]})" if "file" in entry else ""
    return split.describe() + size


def committed(storage: Storage, output: Storage, specs: tuple[TaskSpec, ...]) -> frozenset[str]:
    """The tasks among ``specs`` whose committed attempt can be re-used as it is.

    A map commit is re-used when every run file it names exists, a reduce commit when its part
    file (under the output's ``_temporary/``) exists; a commit whose files are gone is deleted so
    that the task runs again.
    """
    return frozenset(
        spec.task_id for spec in specs if commit_is_whole(storage, output, spec.job_id, spec.task_id)
    )


def commit_is_whole(storage: Storage, output: Storage, job_id: str, task_id: str) -> bool:
    """Whether ``task_id`` of ``job_id`` has a COMMIT whose files all exist (see :func:`committed`);
    a commit whose files are gone is deleted, so that the task runs again."""
    key = layout.commit_key(job_id, task_id)
    raw = storage.get_or_none(key)
    if raw is None:
        return False
    manifest = json.loads(raw)
    if task_id.startswith(f"{TaskKind.MAP.value}-"):
        whole = all(storage.exists(entry[0]) for entry in manifest.get("parts", {}).values())
    else:
        whole = output.exists(manifest["key"])
    if not whole:
        storage.delete(key)
    return whole


def clear_state(storage: Storage, output: Storage | None, job_id: str) -> None:
    """Delete what an earlier run of ``job_id`` left, except its epochs (they keep counting up)."""
    keep = f"{job_id}/epoch/"
    for key in list(storage.list(f"{job_id}/")):
        if not key.startswith(keep):
            storage.delete(key)
    if output is not None:
        keep_out = f"_temporary/{keep}"
        for key in list(output.list(f"_temporary/{job_id}/")):
            if not key.startswith(keep_out):
                output.delete(key)
