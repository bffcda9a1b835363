"""One package per distributed backend, both ends together: its executor, its far side (worker loop,
HTTP server, function handler), its asynchronous job logic, and its wire format and key scheme.

* :mod:`mrkit.backends.redis` — a fleet of workers coordinated through Redis Streams;
* :mod:`mrkit.backends.http` — HTTP worker processes that receive task metadata only;
* :mod:`mrkit.backends.aws_lambda` — serverless functions, shuffle through an object store.

A backend never imports another backend; the core reaches a backend only through the executor
registry strings of :mod:`mrkit.execution.base` (``tests/test_import_layers.py`` enforces both).
"""
