"""How the user's code travels to workers: cloudpickle, plus the local modules it needs and their source.

:func:`dumps` pickles a job or a futures function so that a worker that cannot import the user's
files still runs it, and so that its tracebacks and ``pdb`` show the user's real file and source:

* **Local modules go by value, transitively.** A module that is not an installed package (the job's
  file, ``import common`` beside it, a package in the project folder) is pickled by value, and so is
  every local module its globals reach (Lithops does the same). Installed packages and the standard
  library go by reference: the worker imports its own copy.
* **Real file names.** cloudpickle 3.1 renames every by-value code object's file ``<dynamic-code>``
  (for deterministic payloads); we keep ``co_filename``, so that a remote traceback says
  ``File "/home/me/job.py", line 7, in mapper``.
* **Source text travels too.** The source of each by-value module is stored beside the object and put
  into the worker's :mod:`linecache` when the payload is loaded (by plain :func:`pickle.loads`), so
  the traceback shows the source line even on a machine where the file does not exist.

A module that cannot be shipped (a compiled extension, or more than :data:`MAX_SOURCE_BYTES` of
source) fails with one sentence when the job is meant for remote workers.
"""

from __future__ import annotations

import io
import linecache
import os
import sys
import sysconfig
import types
from collections import ChainMap
from typing import Any

import cloudpickle

from mrkit.errors import ConfigError

MAX_SOURCE_BYTES = 16 << 20  # source shipped with one job; past this, install the code on the workers
_DYNAMIC = "<dynamic-code>"
_INSTALLED = tuple(
    {
        os.path.realpath(p)
        for p in (
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            sysconfig.get_paths().get("stdlib", ""),
            sysconfig.get_paths().get("purelib", ""),
        )
        if p
    }
)


def is_local(module: types.ModuleType | None) -> bool:
    """True for a module of the user's own files: not mrkit, not the stdlib, not an installed package."""
    if module is None:
        return False
    name = module.__name__
    if name in ("builtins", "mrkit") or name.startswith("mrkit."):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return name == "__main__"  # ``python - <<EOF`` or a notebook: cloudpickle ships it by value
    real = os.path.realpath(path)
    if "site-packages" in real or "dist-packages" in real:
        return False
    return not any(real.startswith(prefix + os.sep) for prefix in _INSTALLED)


def local_modules(*roots: Any) -> list[types.ModuleType]:
    """The local modules that ``roots`` (objects) need, following module globals transitively."""
    found: dict[str, types.ModuleType] = {}
    todo = [sys.modules.get(getattr(root, "__module__", "") or "") for root in roots]
    todo += [sys.modules.get(getattr(type(root), "__module__", "") or "") for root in roots]
    while todo:
        module = todo.pop()
        if module is None or module.__name__ in found or not is_local(module):
            continue
        found[module.__name__] = module
        for value in list(vars(module).values()):
            if isinstance(value, types.ModuleType):
                todo.append(value)
                parent = value.__name__.rpartition(".")[0]
                if parent:
                    todo.append(sys.modules.get(parent))
            elif isinstance(value, (type, types.FunctionType)):
                todo.append(sys.modules.get(getattr(value, "__module__", "") or ""))
    return list(found.values())


def dumps(obj: Any, *, roots: tuple[Any, ...] = (), remote: bool = False) -> bytes:
    """Cloudpickle ``obj`` with the local modules it needs by value and their source.

    Args:
        obj: the job or function to ship.
        roots: objects whose modules to start from (default: ``obj`` itself).
        remote: the payload is for workers on other machines: a local module that cannot travel
            (a compiled extension) is then an error instead of being left for the worker to import.

    Raises:
        ConfigError: a local module cannot be shipped (compiled, or its source is too big).
    """
    sources: dict[str, list[str]] = {}
    total = 0
    for module in local_modules(obj, *roots):
        path = getattr(module, "__file__", None) or ""
        if path and not path.endswith(".py"):
            if remote:
                raise ConfigError(
                    f"module {module.__name__!r} ({path}) is a compiled extension and cannot be "
                    "shipped to remote workers with the job: install it on the workers"
                )
            continue
        if module.__name__ != "__main__":
            cloudpickle.register_pickle_by_value(module)
        if path:
            lines = linecache.getlines(path)
            total += sum(map(len, lines))
            if lines:
                sources[path] = lines
    if total > MAX_SOURCE_BYTES:
        raise ConfigError(
            f"the job's local modules hold {total >> 20} MiB of source, over the {MAX_SOURCE_BYTES >> 20} "
            "MiB shipped with a job: install the code on the workers as a package instead"
        )
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5).dump(_Shipped(obj, sources) if sources else obj)
    return buffer.getvalue()


class _Shipped:
    """``obj`` with the source of its by-value modules; unpickles to ``obj`` itself."""

    def __init__(self, obj: Any, sources: dict[str, list[str]]) -> None:
        self.obj = obj
        self.sources = sources

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unship, (self.sources, self.obj))


def _unship(sources: dict[str, list[str]], obj: Any) -> Any:
    """Make ``sources`` visible to tracebacks and pdb here, then return the shipped object."""
    for path, lines in sources.items():
        if not os.path.exists(path):
            # mtime None: linecache.checkcache keeps the entry (it cannot stat a file that is not here).
            linecache.cache[path] = (sum(map(len, lines)), None, lines, path)
    return obj


def _reduce_code(code: types.CodeType) -> Any:
    """cloudpickle's code reducer, with the code object's real file name put back."""
    rebuild, args = _code_reduce(code)
    return rebuild, tuple(code.co_filename if arg == _DYNAMIC else arg for arg in args)


# cloudpickle 3 keeps its reducers in cloudpickle.cloudpickle; 2.x in cloudpickle.cloudpickle_fast.
_code_reduce = (
    getattr(cloudpickle.cloudpickle, "_code_reduce", None)
    or vars(__import__("cloudpickle.cloudpickle_fast", fromlist=["_code_reduce"]))["_code_reduce"]
)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)
