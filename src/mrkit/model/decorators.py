"""Decorators that mark a module's plain functions as a job's parts (seed 001's ``@map_handler``).

Users coming from serverless-MR write one function per role and decorate it; mrkit builds the
:class:`~mrkit.model.job.Job` from the module::

    # adrevenue_job.py
    import mrkit

    @mrkit.map_handler
    def map_function(line):
        fields = line.split(",")
        yield fields[1], float(fields[3])

    @mrkit.reduce_handler
    def reduce_function(url, revenues):
        return sum(revenues)

    def partition(key, num_bins):          # found by its name, as serverless-MR does
        return len(key) % num_bins

``mrkit run adrevenue_job.py 'visits/*.csv'`` (a job reference without ``:Name``) or
``mrkit.job_from_module(adrevenue_job)`` makes the job. A package is searched with its direct
submodules (seed 001 keeps ``map.py``, ``reduce.py`` and ``partition.py`` in a ``user_job``
package). The decorators return the function unchanged: it can still be called and tested directly.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from mrkit.errors import ConfigError
from mrkit.model.job import Job

F = TypeVar("F", bound=Callable[..., Any])

_ROLE = "__mrkit_role__"
# The name a seed-001 user gives the partition function, used when no function is decorated.
_PARTITION_NAME = "partition"


def _marker(role: str) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        if not callable(fn):
            raise ConfigError(f"@{role}_handler decorates a function, got {type(fn).__name__}")
        # A set, so that one function may hold two roles (@combine_handler @reduce_handler).
        setattr(fn, _ROLE, getattr(fn, _ROLE, frozenset()) | {role})
        return fn

    mark.__name__ = f"{role}_handler"
    mark.__doc__ = f"Mark ``fn`` as the job's {role} (see :mod:`mrkit.model.decorators`); returns ``fn``."
    return mark


map_handler = _marker("mapper")
combine_handler = _marker("combiner")
reduce_handler = _marker("reducer")
partition_handler = _marker("partitioner")


def job_from_module(module: ModuleType, params: dict[str, Any] | None = None) -> Job:
    """Build a job from the decorated functions of ``module`` (and of its submodules, if a package).

    Args:
        module: the imported module.
        params: the job's ``params`` (read with ``mrkit.context().params``).

    Returns:
        ``Job(mapper=…, reducer=…, combiner=…, partitioner=…)`` named after the module.

    Raises:
        ConfigError: no ``@map_handler`` function, or two functions marked for one role.
    """
    found: dict[str, Callable[..., Any]] = {}
    scopes = _scopes(module)
    for scope in scopes:
        for name, value in vars(scope).items():
            roles = getattr(value, _ROLE, ()) if callable(value) else ()
            for role in sorted(roles):
                if found.get(role, value) is not value:
                    raise ConfigError(
                        f"{module.__name__} marks two functions as {role}: "
                        f"{found[role].__name__} and {name}; keep one"
                    )
                found[role] = value
    if "partitioner" not in found:
        for scope in scopes:
            fn = getattr(scope, _PARTITION_NAME, None)
            if callable(fn) and not isinstance(fn, ModuleType):
                found["partitioner"] = fn
                break
    if "mapper" not in found:
        raise ConfigError(
            f"module {module.__name__} has no @mrkit.map_handler function and the job reference names "
            "no object: decorate the map function, or name a Job as module:Name"
        )
    name = module.__name__.rpartition(".")[2].removeprefix("mrkit_user_")
    return Job(**found, params=params, files=(), name=name)  # type: ignore[arg-type]  # found: slot -> function


def _scopes(module: ModuleType) -> list[ModuleType]:
    scopes = [module]
    for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
        scopes.append(importlib.import_module(f"{module.__name__}.{info.name}"))
    return scopes
