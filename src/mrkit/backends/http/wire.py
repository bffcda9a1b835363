"""The HTTP backend's wire: what the driver and a worker server agree on, written once.

Both ends import it: the driver (:mod:`.executor`, :mod:`.exchange`, :mod:`.workers`), the worker
(:mod:`.server`, and :mod:`.tasks` for its own task processes) and the signing (:mod:`.auth`).

Endpoints (HTTP/1.1 keep-alive)::

    POST /task    TaskSpec JSON, signed (mrkit.backends.http.auth)  ->  200 TaskResult JSON, signed
    GET  /health  unauthenticated                          ->  200 {"ok": true}
    GET  /status  unauthenticated                          ->  200 {"version", "running", "completed",
                                                                    "failed", "refused", "uptime_seconds"}

Answers to ``POST /task`` other than 200 (:data:`REFUSED` are the worker refusing *us*; the driver
takes such a worker out of rotation)::

    400 signed    {"error"}                      a signed spec the worker cannot decode
    401 unsigned  {"error"}                      unsigned, bad signature or stale timestamp
    403 unsigned  {"error"}                      a web browser's request (Origin, Sec-Fetch-Site)
    409 unsigned  {"error", "replayed": true}    a nonce seen before: nothing ran; send it again
    409 signed    {"error", "need": "call_fn"}   a futures function this worker does not know: send
                                                 the task again with its function
    411, 413      {"error"}                      no Content-Length, or a body over the limit
    421 unsigned  {"error"}                      a Host that is not one of the worker's addresses
    503 signed    {"error", "lost": why}         the task process running the attempt was killed
                                                 from outside: the attempt's outcome is unknown

A worker the driver starts (``python -m mrkit.backends.http.server --driver``) reads one JSON line
from its stdin (:func:`startup_line`: ``{"secret", "sys_path", "ready_fd"}``) and writes its URL and
a newline to ``ready_fd`` once it serves.
"""

from __future__ import annotations

import json
from typing import Any

TASK_PATH = "/task"
HEALTH_PATH = "/health"
STATUS_PATH = "/status"
CONTENT_TYPE = "application/json"

HEADER_TIMESTAMP = "X-Mrkit-Timestamp"
HEADER_NONCE = "X-Mrkit-Nonce"
HEADER_SIGNATURE = "X-Mrkit-Signature"
BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site")  # a request carrying one came from a web page

OK = 200
BAD_REQUEST = 400
UNAUTHORIZED = 401
FORBIDDEN = 403
NOT_FOUND = 404
CONFLICT = 409  # unsigned: a replayed request; signed: send the futures function
LENGTH_REQUIRED = 411
TOO_LARGE = 413
MISDIRECTED = 421
LOST = 503
REFUSED = (UNAUTHORIZED, FORBIDDEN, MISDIRECTED)  # the worker refused our request itself

DRIVER_FLAG = "--driver"  # the flag of a worker a driver starts (configured through stdin)


def error_body(message: str, **fields: Any) -> bytes:
    """The JSON body of an answer that is not a result: ``{"error": message, …}``."""
    return json.dumps({"error": message, **fields}).encode()


HEALTHY = json.dumps({"ok": True}).encode()
NEED_FUNCTION = b'{"error":"unknown function digest","need":"call_fn"}'


def replayed_body(message: str) -> bytes:
    return error_body(message, replayed=True)


def lost_body(why: str) -> bytes:
    return error_body(f"attempt lost: {why}", lost=why)


def lost_reason(body: bytes) -> str:
    """Why the worker lost the attempt, from a 503 answer (its start when it is not ours)."""
    try:
        return str(json.loads(body)["lost"])
    except (ValueError, KeyError, TypeError):
        return excerpt(body)


def excerpt(body: bytes) -> str:
    """The start of an answer's body, for a message."""
    return body[:200].decode("utf-8", "replace")


def startup_line(secret: bytes, sys_path: list[str], ready_fd: int) -> bytes:
    """What a driver writes to the stdin of a worker it started."""
    return (
        json.dumps({"secret": secret.decode("ascii"), "sys_path": sys_path, "ready_fd": ready_fd}).encode()
        + b"\n"
    )


def parse_startup_line(line: bytes) -> tuple[bytes, list[str], int]:
    """``(secret, sys_path, ready_fd)`` of :func:`startup_line`."""
    config = json.loads(line)
    return config["secret"].encode("ascii"), list(config["sys_path"]), int(config["ready_fd"])
