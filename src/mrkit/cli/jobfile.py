"""Finding the user's job: ``module:Name`` / ``path/to/file.py:Name`` references, modules of decorated
functions, and JSON job files.

A job file (seed 000's ``job.json``, extended)::

    {"job": "wordcount.py:WordCount", "inputs": ["texts/*.txt"], "n_map": 8, "n_reduce": 4,
     "output": "out/", "executor": "processes", "params": {"min_count": 2}, "format": "tsv"}

``inputs`` entries that are strings are paths/globs (relative to the job file's folder); any other
JSON value (numbers, objects, lists) is an inline record, e.g. ``[100000, 100000]`` for Monte Carlo π.
An object ``{"rankings/": "rank_mapper", "uservisits/": "visit_mapper"}`` reads each input with its
own mapper (a function of the job's module, or ``module:function``). A ``job`` reference to a file
is resolved relative to the job file too.

A multi-step job lists its steps by function names, ``job`` naming the module they live in::

    {"job": "topwords.py", "inputs": ["texts/"],
     "steps": [{"mapper": "words", "combiner": "total", "reducer": "total"},
               {"mapper": "to_ranking", "reducer": "top", "n_reduce": 1}]}

(each step: ``mapper``, ``combiner``, ``reducer``, ``partitioner`` as function names or
``module:function``, ``n_reduce``, ``params``, ``name``; see :class:`mrkit.Step`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from mrkit.errors import ConfigError
from mrkit.model.decorators import job_from_module
from mrkit.model.job import Job

_KNOWN_KEYS = {
    "job",
    "inputs",
    "n_map",
    "n_reduce",
    "output",
    "executor",
    "params",
    "format",
    "workers",
    "memory_mb",
    "errors",
    "input_format",
    "split_size",
    "sort_values",
    "sort_output",
    "steps",
}


def load_job(ref: str, params: dict[str, Any] | None = None) -> Job:
    """Import the job named by ``ref`` and return a :class:`Job` instance.

    Args:
        ref: ``package.module:Name`` or ``path/to/file.py:Name``; ``Name`` is a Job instance, a
            Job subclass (instantiated with ``params``) or a function returning a Job. Without
            ``:Name``, the module's decorated functions are the job (:mod:`mrkit.model.decorators`).
        params: job parameters.

    Raises:
        ConfigError: the reference is malformed, the module or name does not exist, or the object
            is not a job.
    """
    if ":" not in ref:
        # A bare module: its @mrkit.map_handler / @mrkit.reduce_handler functions are the job.
        return job_from_module(_import(ref), params)
    module_ref, _, name = ref.rpartition(":")
    module = _import(module_ref)
    try:
        obj = getattr(module, name)
    except AttributeError:
        raise ConfigError(f"{module_ref} has no attribute {name!r}{_suggest(module, name)}") from None
    if isinstance(obj, type) and issubclass(obj, Job):
        return obj(params=params)
    if isinstance(obj, Job):
        return obj.with_params(params) if params else obj
    if callable(obj):
        made = obj()
        if isinstance(made, Job):
            return made.with_params(params) if params else made
    raise ConfigError(
        f"{ref} is a {type(obj).__name__}, not an mrkit.Job, a Job subclass or a function returning one"
    )


def _suggest(module: Any, name: str) -> str:
    """``"; did you mean 'WordCount'? (jobs in it: WordCount, TopN)"`` for a mistyped job name."""
    jobs = sorted(
        attr
        for attr, obj in vars(module).items()
        if not attr.startswith("_")
        and ((isinstance(obj, type) and issubclass(obj, Job) and obj is not Job) or isinstance(obj, Job))
    )
    if not jobs:
        return "; it defines no mrkit.Job (a Job subclass, or an instance of mrkit.Job)"
    close = difflib.get_close_matches(name, jobs, n=1, cutoff=0.5)
    if not close:  # a case slip: wordcount for WordCount
        lowered = difflib.get_close_matches(name.lower(), [j.lower() for j in jobs], n=1, cutoff=0.5)
        close = [j for j in jobs if lowered and j.lower() == lowered[0]][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (jobs in it: {', '.join(jobs)})" if hint else f"; the jobs in it are: {', '.join(jobs)}"


def _import(module_ref: str) -> Any:
    folder = module_ref.rstrip("/" + os.sep)
    if folder and os.path.isfile(os.path.join(folder, "__init__.py")):
        # A package given as a folder (`mrkit run user_job/ …`): import it by name from its parent.
        parent, name = os.path.split(os.path.abspath(folder))
        if parent not in sys.path:
            sys.path.insert(0, parent)
        return _import_by_name(name)
    if module_ref.endswith(".py") or os.sep in module_ref or "/" in module_ref:
        path = os.path.abspath(module_ref)
        if not os.path.isfile(path):
            raise ConfigError(f"job file {module_ref} does not exist")
        name = "mrkit_user_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        # The module's own folder goes on sys.path so that it can import its neighbours.
        sys.path.insert(0, os.path.dirname(path))
        spec.loader.exec_module(module)
        return module
    return _import_by_name(module_ref)


def _import_by_name(module_ref: str) -> Any:
    # The `mrkit` console script, unlike `python -m mrkit`, does not put the current folder on
    # sys.path; a user running `mrkit run mypackage.jobs:Job …` from their project expects it there.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import job module {module_ref!r}: {exc}") from exc


@dataclass
class JobFile:
    """A parsed job file: the job plus the run options it names."""

    job: Job
    inputs: list[Any] | dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


def load_job_file(path: str) -> JobFile:
    """Parse a JSON job file.

    Raises:
        ConfigError: invalid JSON, a missing ``job`` or ``inputs`` key, or an unknown key.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"job file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"job file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "job" not in data or "inputs" not in data:
        raise ConfigError(f'job file {path} must be a JSON object with at least "job" and "inputs"')
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(
            f"job file {path} has unknown keys {sorted(unknown)}; valid keys: {sorted(_KNOWN_KEYS)}"
        )
    base = os.path.dirname(os.path.abspath(path))
    job_ref = data["job"]
    module_ref, sep, name = job_ref.rpartition(":")
    if not sep:  # a bare module of decorated functions
        module_ref, name = job_ref, ""
    if module_ref.endswith(".py"):
        module_ref = _beside(base, module_ref)
        job_ref = module_ref + sep + name
    if "steps" in data:
        job = _steps_job(path, base, module_ref, data["steps"], data.get("params") or None)
    else:
        job = load_job(job_ref, data.get("params") or None)
    options = {k: v for k, v in data.items() if k not in ("job", "inputs", "params", "steps")}
    if "output" in options and not os.path.isabs(options["output"]) and "://" not in options["output"]:
        options["output"] = os.path.join(base, options["output"])
    if isinstance(data["inputs"], dict):  # a mapper per input: {"rankings/": "rank_mapper", ...}
        mapped = {
            os.path.join(base, where): _mapper(f"job file {path}", base, module_ref, ref)
            for where, ref in data["inputs"].items()
        }
        return JobFile(job=job, inputs=mapped, options=options)
    raw_inputs = data["inputs"] if isinstance(data["inputs"], list) else [data["inputs"]]
    paths = [os.path.join(base, i) for i in raw_inputs if isinstance(i, str)]
    records = [i for i in raw_inputs if not isinstance(i, str)]
    if paths and records:
        raise ConfigError(f"job file {path}: inputs mix paths and inline values; use one kind")
    return JobFile(job=job, inputs=paths or records, options=options)


_STEP_KEYS = {"mapper", "combiner", "reducer", "partitioner", "n_reduce", "params", "name"}


def _steps_job(path: str, base: str, module_ref: str, steps: Any, params: dict[str, Any] | None) -> Job:
    """The multi-step job a job file's ``"steps"`` list names (functions of ``module_ref`` or
    ``module:function``).

    Raises:
        ConfigError: ``steps`` is not a list of objects, a step has an unknown key, or names a
            function that does not exist.
    """
    from mrkit.model.steps import Step

    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ConfigError(f'job file {path}: "steps" must be a list of objects, one per step')
    built = []
    for k, step in enumerate(steps, 1):
        unknown = set(step) - _STEP_KEYS
        if unknown:
            raise ConfigError(
                f"job file {path}: step {k} has unknown keys {sorted(unknown)}; valid: {sorted(_STEP_KEYS)}"
            )
        functions = {
            slot: _function(f"job file {path}, step {k}", base, module_ref, step[slot], slot)
            for slot in ("mapper", "combiner", "reducer", "partitioner")
            if slot in step
        }
        built.append(
            Step(
                **functions,
                n_reduce=step.get("n_reduce"),
                params=step.get("params") or {},
                name=step.get("name"),
            )
        )
    name = os.path.basename(module_ref).removesuffix(".py") or "steps"
    return Job(steps=built, params=params, name=name)


def _beside(base: str, module_file: str) -> str:
    """A job file's reference to a ``.py`` file, resolved relative to the job file's folder ``base``."""
    return module_file if os.path.isabs(module_file) else os.path.join(base, module_file)


def _mapper(where: str, base: str, job_module: str, ref: Any) -> Any:
    """The mapper ``ref`` of a job file's ``{"input": "ref"}`` (see :func:`_function`)."""
    return _function(where, base, job_module, ref, "mapper per input")


def _function(where: str, base: str, job_module: str, ref: Any, what: str) -> Any:
    """The function ``ref`` names: a function of the job's module by name, or ``module:function`` /
    ``file.py:function`` (relative to the job file).

    Raises:
        ConfigError: ``ref`` is not a string, or names nothing callable.
    """
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f'{where}: a {what} is named by a string ("module:function"), got {ref!r}')
    module_ref, sep, name = ref.rpartition(":")
    if not sep:
        module_ref, name = job_module, ref
    elif module_ref.endswith(".py"):
        module_ref = _beside(base, module_ref)
    module = _import(module_ref)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{where}: {module_ref} has no function {name!r} (the {what})")
    return fn


def load_request(
    job_ref: str, inputs: tuple[str, ...], options: dict[str, Any]
) -> tuple[Job, Any, dict[str, Any]]:
    """What ``mrkit run`` and ``mrkit submit`` share: the job, its inputs and the run options.

    Args:
        job_ref: a job reference or a JSON job file (``.json``).
        inputs: the INPUT arguments; they replace a job file's ``inputs`` when given.
        options: the command's options without ``param`` (the job parameters, given here as
            ``params``) and with ``None`` for options not given.

    Returns:
        ``(job, inputs, options)``: inline values are wrapped in :class:`mrkit.Records`; the
        command line's options override the job file's.

    Raises:
        ConfigError: no INPUT and no job file, or a bad job reference or file.
    """
    from mrkit.coordination.prepare import Records

    params = options.pop("params")
    pairs = options.pop("input_mappers", ()) or ()
    given = {k: v for k, v in options.items() if v is not None}
    if pairs:
        if inputs:
            raise ConfigError(
                "give the inputs either as INPUT arguments or each with --input-mapper PATH=MAPPER, not both"
            )
        if job_ref.endswith(".json"):
            raise ConfigError('--input-mapper applies to a job reference; a job file names them in "inputs"')
        job = load_job(job_ref, params or None)
        module_ref = job_ref.rpartition(":")[0] or job_ref
        mapped = {}
        for pair in pairs:
            where, sep, ref = pair.rpartition("=")
            if not sep or not where or not ref:
                raise ConfigError(f"--input-mapper {pair!r} must look like PATH=MAPPER")
            mapped[where] = _mapper(f"--input-mapper {pair}", os.getcwd(), module_ref, ref)
        return job, mapped, given
    if job_ref.endswith(".json"):
        spec = load_job_file(job_ref)
        job = spec.job.with_params(params) if params else spec.job
        run_inputs: Any = list(inputs) or spec.inputs
        merged = {**spec.options, **given}
    else:
        if not inputs:
            raise ConfigError(
                "no INPUT given: name files, globs or folders after the job (or use a job.json)"
            )
        job = load_job(job_ref, params or None)
        run_inputs, merged = list(inputs), given
    if run_inputs and not isinstance(run_inputs, dict) and not isinstance(run_inputs[0], str):
        run_inputs = Records(run_inputs)
    return job, run_inputs, merged
