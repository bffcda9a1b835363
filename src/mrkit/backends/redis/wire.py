"""The Redis backend's wire: its key scheme, the signed entry format, and the liveness beats.

Written once, read by every side of the backend: the blocking executor
(:mod:`mrkit.backends.redis.executor`), the fleet's workers (:mod:`mrkit.backends.redis.worker`) and
the asynchronous jobs (:mod:`mrkit.backends.redis.job_state` adds each job's keys, ``mrkit:{job}:…``).

Wire format of a stream entry: field ``p`` is ``header-JSON + b"\\n" + body`` and field ``s`` its
signature (HMAC-SHA256 over the exact payload bytes, :mod:`mrkit.security`); each side verifies
before decoding or unpickling anything. A task's body is ``TaskSpec.encode()``; a result's is
``TaskResult.encode()``. Key names and the timings every side must agree on are below.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mrkit.errors import ConfigError
from mrkit.security import is_loopback, load_secret, require, sign
from mrkit.storage.redis import RedisURL

GROUP = "workers"  # the consumer group of every task stream
QUEUES = "mrkit:queues"  # ZSET: task stream -> expiry (unix ms); workers read the live ones
WORKERS = "mrkit:workers"  # ZSET: worker name -> last heartbeat (unix ms)
JOBS = "mrkit:jobs"  # ZSET: asynchronous job id -> submit time (unix ms)
DEAD = "mrkit:dead"  # STREAM: entries a worker refused (bad signature, undecodable), for operators
DEAD_MAXLEN = 1000

WORKER_ALIVE_MS = 15_000  # a worker whose heartbeat is older than this is not counted as live
WORKER_BEAT = 0.5  # seconds between two liveness beats of a worker (and of its supervisor for it)
WORKER_GONE_MS = 3_000  # a consumer without a liveness beat for this long (6 beats) has departed
DEPARTURE_CHECK = 0.5  # seconds between two looks for departed consumers (per executor / worker)
HANDBACK_IDLE_MS = 10**12  # "idle forever": the next XAUTOCLAIM takes a handed-back entry at once


def key(scope: str, name: str) -> str:
    """The Redis key ``name`` of a job or session: ``mrkit:{scope}:name`` (braces: a hash tag)."""
    return f"mrkit:{{{scope}}}:{name}"


def now_ms() -> int:
    return int(time.time() * 1000)


def resolve_secret(url: str, secret_file: str | None = None, *, secret: bytes | None = None) -> bytes:
    """The signing key for the Redis at ``url``.

    Args:
        url: the Redis URL (its host decides whether running without a secret is allowed).
        secret_file: ``--secret-file``; else ``MRKIT_SECRET``.
        secret: an explicit secret (wins over both).

    Returns:
        The secret, or ``b""`` when none is configured and Redis is on loopback.

    Raises:
        ConfigError: no secret is configured and Redis is not on loopback.
    """
    if secret is None:
        secret = load_secret(secret_file)
    if secret is not None:
        return secret
    parsed = RedisURL.parse(url)
    if not is_loopback(parsed.host):
        raise ConfigError(
            f"Redis at {parsed.host} is not on loopback: every submitter and worker must share a "
            "secret to sign tasks; set MRKIT_SECRET or pass --secret-file"
        )
    return b""


def pack(secret: bytes, header: dict[str, Any], body: bytes) -> dict[str, bytes | str]:
    """The fields of a signed stream entry carrying ``header`` and ``body``."""
    payload = json.dumps(header, separators=(",", ":")).encode() + b"\n" + body
    return {"p": payload, "s": sign(secret, payload)}


def unpack(secret: bytes, fields: dict[bytes, bytes], what: str) -> tuple[dict[str, Any], bytes]:
    """Verify a stream entry's signature, then split it into its header and body.

    Raises:
        AuthenticationError: the signature is missing or does not verify (nothing was decoded).
        ValueError: the verified payload is malformed.
    """
    payload = fields.get(b"p", b"")
    require(secret, payload, fields.get(b"s"), what)
    head, sep, body = payload.partition(b"\n")
    if not sep:
        raise ValueError(f"{what} has no header line")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError(f"{what} has a header that is not a JSON object")
    return header, body


# Beat the liveness of the consumers ARGV[1..] in KEYS[1] (mrkit:workers), in Redis's own clock so
# that hosts whose clocks differ agree on who is alive.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
return now
"""

# Hand back the entries of the streams KEYS[2..] held by consumers whose liveness beat in KEYS[1]
# (mrkit:workers) is older than ARGV[2] ms, or missing: XCLAIM to the same consumer with an idle
# time of ARGV[3] ms, so that the next XAUTOCLAIM takes them at once. ARGV[1]: the group. Returns
# the number of entries handed back per stream.
_DEPARTED = """
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
local idle = tonumber(ARGV[3])
local out = {}
for i = 2, #KEYS do
  local n = 0
  local summary = redis.pcall('XPENDING', KEYS[i], ARGV[1])
  if type(summary) == 'table' and not summary.err and summary[1] > 0 and summary[4] then
    for _, c in ipairs(summary[4]) do
      local name = c[1]
      local seen = redis.call('ZSCORE', KEYS[1], name)
      if name ~= 'executor' and (not seen or tonumber(seen) < cutoff) then
        local ids = {}
        for _, e in ipairs(redis.call('XPENDING', KEYS[i], ARGV[1], '-', '+', 1000, name)) do
          if e[3] < idle then ids[#ids + 1] = e[1] end
        end
        if #ids > 0 then
          redis.call('XCLAIM', KEYS[i], ARGV[1], name, 0, unpack(ids), 'IDLE', idle, 'JUSTID')
          n = n + #ids
        end
      end
    end
  end
  out[#out + 1] = n
end
return out
"""


def beat(client: Any, *names: str) -> None:
    """Record that the consumers ``names`` are alive now (Redis's clock), in ``mrkit:workers``."""
    if names:
        client.register_script(_BEAT)(keys=[WORKERS], args=list(names))


def hand_back_departed(client: Any, streams: list[str]) -> list[int]:
    """Make the entries of ``streams`` held by departed consumers (no liveness beat for
    ``WORKER_GONE_MS``) reclaimable at once; returns how many were handed back, per stream.

    The entries keep their owner: whoever reclaims them (``XAUTOCLAIM``) counts them as lost, as if
    their lease had expired. A consumer that was only slow gets its entries taken over like a worker
    whose lease expired: at-least-once, and only the first commit counts.
    """
    if not streams:
        return []
    script = client.register_script(_DEPARTED)
    reply = script(keys=[WORKERS, *streams], args=[GROUP, WORKER_GONE_MS, HANDBACK_IDLE_MS])
    return [int(n) for n in reply]


def live_workers(client: Any) -> int:
    """How many worker processes heartbeated in the last ``WORKER_ALIVE_MS``."""
    return int(client.zcount(WORKERS, now_ms() - WORKER_ALIVE_MS, "+inf"))
