"""A serverless job's cost report: requests and GB-seconds per phase, and an estimated price.

Computed from the job's task events alone (:mod:`mrkit.coordination.events`: each ended delivery's
wall clock and its function's ``memory_mb``), plus the invocations the backend made besides its
tasks when it knows them (``driver_invocations``). Pure arithmetic: no backend, no I/O but reading
a price file the user names. The serverless handle puts it in ``status().cost`` (``mrkit status``
prints one line of it, :func:`describe`).

The formula, per phase (``map``, ``reduce``; ``driver`` for the other invocations)::

    requests   = number of ended events of the phase (one function invocation per delivery)
    gb_seconds = sum over those events of ceil(duration in ms) / 1000 * memory_mb / 1024
    price      = requests / 1e6 * per_million_requests + gb_seconds * per_gb_second

The default price table, :data:`DEFAULT_PRICES`, is AWS Lambda's **list price for x86 functions**
(us-east-1, first pricing tier): **$0.20 per million requests** and **$0.0000166667 per
GB-second**. These are list prices to check against your region, architecture (arm64 is cheaper
per GB-second), tier, free tier and discounts: the report is an estimate. Override them with the
environment variable ``MRKIT_LAMBDA_PRICES`` naming a JSON file, e.g.
``{"per_million_requests": 0.2, "per_gb_second": 0.0000133334, "currency": "USD"}`` (any subset), or
with keyword arguments to :func:`price_table`.

What the estimate leaves out: a delivery that died and was retried by Lambda itself is counted once
(by its retry, or by the attempt's ``lost`` event); an invocation's time outside its tasks (a cold
start's init, starting the next phase, publishing) is not in any event; an invocation that ran a
batch of tiny tasks (``batch_size`` > 1) counts one request per task; and S3 requests, storage,
data transfer and ephemeral storage are not Lambda charges and are not included.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from mrkit.coordination.events import TaskEvent
from mrkit.errors import ConfigError

PRICES_ENV = "MRKIT_LAMBDA_PRICES"


@dataclass(frozen=True)
class PriceTable:
    """Prices of one function invocation's request and compute (see the module docstring)."""

    per_million_requests: float = 0.20
    per_gb_second: float = 0.0000166667
    currency: str = "USD"
    source: str = "AWS Lambda x86 list price (us-east-1, first tier): check yours"


DEFAULT_PRICES = PriceTable()


def price_table(path: str | None = None, **overrides: Any) -> PriceTable:
    """The price table: :data:`DEFAULT_PRICES`, then the JSON file ``path`` (default: the file
    ``$MRKIT_LAMBDA_PRICES`` names, if set), then ``overrides`` (``per_million_requests``,
    ``per_gb_second``, ``currency``).

    Raises:
        ConfigError: the file cannot be read, is not a JSON object, names an unknown price, or a
            price is not a non-negative number.
    """
    prices = DEFAULT_PRICES
    path = path or os.environ.get(PRICES_ENV) or None
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the price table {path} ({PRICES_ENV}): {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the price table {path} ({PRICES_ENV}) is not a JSON object")
        prices = _with(prices, data, f"the price table {path}")
        prices = replace(prices, source=str(data.get("source", path)))
    if overrides:
        prices = _with(prices, overrides, "price_table()")
        prices = replace(prices, source=str(overrides.get("source", "given")))
    return prices


def _with(prices: PriceTable, data: Mapping[str, Any], where: str) -> PriceTable:
    known = {"per_million_requests", "per_gb_second", "currency", "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where} names unknown prices {unknown}; it may set {sorted(known)}")
    changes: dict[str, Any] = {}
    for name in ("per_million_requests", "per_gb_second"):
        if name in data:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{where}: {name} must be a non-negative number, not {value!r}")
            changes[name] = float(value)
    if "currency" in data:
        changes["currency"] = str(data["currency"])
    return replace(prices, **changes)


def gb_seconds(event: TaskEvent) -> float:
    """What one ended event is billed for: its duration rounded up to 1 ms, times its memory in GB."""
    if not event.end or event.memory_mb <= 0:
        return 0.0
    ms = math.ceil(round(max(0.0, event.end - event.start) * 1000, 6))  # 6 places: float noise
    return ms / 1000 * event.memory_mb / 1024


def cost_report(
    events: Iterable[TaskEvent], *, driver_invocations: int = 0, prices: PriceTable | None = None
) -> dict[str, Any]:
    """The cost report of a job with these ``events`` (ended ones count; running ones, ``end`` 0,
    wait for their end).

    Args:
        events: the job's task events.
        driver_invocations: invocations besides the tasks' (a driver or trigger function), counted
            as requests of the ``driver`` phase.
        prices: the price table (default: :func:`price_table`).

    Returns:
        A JSON-able dict: ``{"requests": {phase: n, ..., "total": n}, "gb_seconds": {phase: x, ...,
        "total": x}, "price": total, "price_requests": p, "price_compute": p, "currency": "USD",
        "prices": {"per_million_requests", "per_gb_second", "source"}}`` (GB-seconds rounded to
        the µGB-s, prices to 1e-9).

    >>> e = TaskEvent("map", "map-00000", 1, start=0.0, end=1.5, memory_mb=1024)
    >>> r = cost_report([e], prices=PriceTable(per_million_requests=0.2, per_gb_second=0.00001))
    >>> r["requests"], r["gb_seconds"], r["price"]
    ({'map': 1, 'total': 1}, {'map': 1.5, 'total': 1.5}, 1.52e-05)
    """
    prices = prices or price_table()
    requests: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for event in events:
        if not event.end:
            continue
        requests[event.phase] = requests.get(event.phase, 0) + 1
        seconds[event.phase] = seconds.get(event.phase, 0.0) + gb_seconds(event)
    if driver_invocations:
        requests["driver"] = requests.get("driver", 0) + int(driver_invocations)
    order = sorted(requests, key=lambda p: (("map", "reduce", "call", "driver") + (p,)).index(p))
    n = sum(requests.values())
    gbs = sum(seconds.values())
    request_price = n / 1e6 * prices.per_million_requests
    compute_price = gbs * prices.per_gb_second
    per_phase = {p: round(seconds.get(p, 0.0), 6) for p in order if p != "driver"}
    return {
        "requests": {**{p: requests[p] for p in order}, "total": n},
        "gb_seconds": {**per_phase, "total": round(gbs, 6)},
        "price": round(request_price + compute_price, 9),
        "price_requests": round(request_price, 9),
        "price_compute": round(compute_price, 9),
        "currency": prices.currency,
        "prices": {k: v for k, v in asdict(prices).items() if k != "currency"},
    }


def describe(cost: Mapping[str, Any]) -> str:
    """One line of a cost report, for ``mrkit status``."""
    if "error" in cost:
        return f"not estimated: {cost['error']}"
    requests, gbs = cost["requests"], cost["gb_seconds"]
    phases = ", ".join(f"{p} {gbs[p]:.3f}" for p in gbs if p != "total")
    prices = cost.get("prices", {})
    return (
        f"~{cost['price']:.6f} {cost.get('currency', 'USD')} (estimate): {requests['total']} requests, "
        f"{gbs['total']:.3f} GB-s ({phases or 'none'}) at {prices.get('per_million_requests', '?')}/1M "
        f"requests, {prices.get('per_gb_second', '?')}/GB-s ({PRICES_ENV} overrides)"
    )
