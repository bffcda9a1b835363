"""The dashboard's web application (Starlette): pages, JSON, live updates, cancel.

Routes::

    GET  /                                   the jobs of every source (live)
    GET  /jobs/{source}/{id}                 one job: progress, counters, tasks, failures, workers,
                                             timeline and duration histogram, logs (live)
    GET  /jobs/{source}/{id}/timeline.svg    the timeline and histogram (mrkit plot's drawing)
    GET  /api/jobs, /api/jobs/{source}/{id}  the same data as JSON
    GET  /api/stream, /api/jobs/{source}/{id}/stream   server-sent events: the JSON each time it
                                             changes (looked at every ``poll`` seconds)
    POST /api/jobs/{source}/{id}/cancel      cancel the job

Why these pieces: Starlette is a small ASGI toolkit whose only dependency is anyio; server-sent
events need nothing but a streaming response (the browser's ``EventSource`` reconnects by itself),
where websockets would add a protocol for a one-way feed. Jinja2 renders the two pages with
autoescaping on; the page's script and stylesheet are files of this package, so the page loads
nothing from elsewhere.

Security:

* **Host check** (DNS rebinding): bound to loopback, only ``127.0.0.1``/``localhost``/``[::1]``
  Host headers are served.
* **Token**: given one (``mrkit dashboard`` makes one whenever it binds beyond loopback), every
  request must carry it: ``?token=`` once (it becomes an HttpOnly, SameSite=Strict cookie and the
  URL is cleaned), the cookie, or ``Authorization: Bearer``. Compared in constant time.
* **Cross-site requests**: ``cancel`` needs the page's random ``X-Mrkit-Csrf`` header (a cross-site
  form cannot set a header, and no CORS is offered) and, when the browser sends one, an ``Origin``
  equal to this server's.
* **No markup from data**: every value reaches the page as JSON put in as text; a CSP forbids
  inline and foreign scripts. Executor URLs are shown without their passwords.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mrkit.coordination.cost import describe as describe_cost
from mrkit.coordination.plot import render_svg
from mrkit.coordination.registry import RegistryJobHandle
from mrkit.dashboard.sources import Source, unreachable
from mrkit.dashboard.views import LOG_LINES, job_view, list_view

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
COOKIE = "mrkit_dashboard_token"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; "
    "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class JobNotFound(Exception):
    """The page's one sentence for a job that cannot be shown."""


def create_app(
    sources: dict[str, Source],
    *,
    token: str | None = None,
    loopback_only: bool = True,
    poll: float = 0.5,
    on_cancel: Callable[[str, str], None] | None = None,
) -> Starlette:
    """The dashboard over ``sources`` (see the module docstring).

    Args:
        sources: by name (:func:`~mrkit.dashboard.sources.open_sources`).
        token: required from every client when set.
        loopback_only: serve only loopback Host headers (the server is bound to loopback).
        poll: seconds between two looks at a job for the live feeds (updates show within it).
        on_cancel: called with (source, job id) after a cancel request was recorded (tests, logs).
    """
    env = Environment(loader=PackageLoader("mrkit.dashboard", "templates"), autoescape=select_autoescape())
    csrf = secrets.token_urlsafe(24)

    def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = env.get_template(name).render(csrf=csrf, **values)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def source_of(name: str) -> Source:
        try:
            return sources[name]
        except KeyError:
            raise JobNotFound(
                f"there is no source {name!r} here (the sources are {', '.join(sources)})"
            ) from None

    def reach(source: Source, job_id: str, call: Callable[[], Any]) -> Any:
        """``call()``, its failure turned into :class:`JobNotFound` saying why in one sentence."""
        try:
            return call()
        except FileNotFoundError:
            raise JobNotFound(f"there is no job {job_id!r} in {source.label}") from None
        except Exception as exc:
            raise JobNotFound(unreachable(source.label, exc)) from exc

    def job_status(source: Source, job_id: str) -> tuple[Any, Any]:
        """The job's handle and status, or :class:`JobNotFound` saying why not."""
        handle = reach(source, job_id, lambda: source.handle(job_id))
        status = reach(source, job_id, handle.status)
        if status.state == "unknown":
            raise JobNotFound(f"{source.label} does not know job {job_id!r} (never submitted, or expired)")
        return handle, status

    def find_job(source_name: str, job_id: str) -> str:
        """The label of the source that holds ``job_id`` (:class:`JobNotFound` when none does)."""
        source = source_of(source_name)
        job_status(source, job_id)
        return source.label

    def load_job(source_name: str, job_id: str, with_logs: bool = True) -> dict[str, Any]:
        source = source_of(source_name)
        handle, status = job_status(source, job_id)
        logs: list[str] = []
        try:
            events = handle.events()
        except NotImplementedError:
            events = []
        except Exception as exc:  # the job's events expired or cannot be read: show the rest
            events = []
            logs.append(unreachable(f"the task events of {job_id}", exc))
        if with_logs:
            try:
                lines = (
                    handle.logs(tail=LOG_LINES) if isinstance(handle, RegistryJobHandle) else handle.logs()
                )
                logs += list(deque(lines, maxlen=LOG_LINES))
            except Exception:  # a backend without logs for this job
                pass
        view = job_view(status, events, logs)
        view["source"] = {"name": source.name, "label": source.label}
        return view

    def load_list() -> dict[str, Any]:
        out = []
        for name, source in sources.items():
            listing = source.listing()
            out.append(
                {
                    "source": name,
                    "label": listing.label,
                    "error": listing.error,
                    "jobs": [list_view(st, name, listing.label) for st in listing.jobs],
                }
            )
        return {"sources": out}

    async def stream(request: Request, load: Callable[[], dict[str, Any]]) -> StreamingResponse:
        async def feed() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                try:
                    payload = await run_in_threadpool(load)
                except JobNotFound as exc:
                    payload = {"error": str(exc)}
                text = json.dumps(payload, sort_keys=True, default=str)
                if text != last:
                    last = text
                    yield f"data: {text}\n\n"
                else:
                    yield ": still here\n\n"  # a comment: finds a closed connection
                state = (payload.get("status") or {}).get("state")
                if state is not None and state != "running":
                    return  # ended: the page has its final state
                await asyncio.sleep(poll)

        return StreamingResponse(feed(), media_type="text/event-stream", headers=HEADERS)

    async def index(request: Request) -> Response:
        return page("jobs.html", sources=[(s.name, s.label) for s in sources.values()])

    async def jobs_json(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(load_list), headers=HEADERS)

    async def jobs_stream(request: Request) -> Response:
        return await stream(request, load_list)

    async def job_page(request: Request) -> Response:
        source, job_id = request.path_params["source"], request.path_params["job_id"]
        try:
            label = await run_in_threadpool(find_job, source, job_id)
        except JobNotFound as exc:
            return page("error.html", 404, message=str(exc))
        return page("job.html", source=source, job_id=job_id, label=label)

    async def job_json(request: Request) -> Response:
        source, job_id = request.path_params["source"], request.path_params["job_id"]
        try:
            return JSONResponse(await run_in_threadpool(load_job, source, job_id), headers=HEADERS)
        except JobNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404, headers=HEADERS)

    async def job_stream(request: Request) -> Response:
        source, job_id = request.path_params["source"], request.path_params["job_id"]
        return await stream(request, lambda: load_job(source, job_id))

    def timeline_svg(source_name: str, job_id: str) -> str:
        source = source_of(source_name)
        handle = reach(source, job_id, lambda: source.handle(job_id))
        events = reach(source, job_id, handle.events)
        # A serverless job's cost under the drawing (mrkit.coordination.cost).
        cost = getattr(handle, "cost", None) if getattr(handle, "reports_cost", False) else None
        note = describe_cost(cost(events)) if cost is not None else ""
        return render_svg(events, job_id, note)

    async def timeline(request: Request) -> Response:
        source, job_id = request.path_params["source"], request.path_params["job_id"]
        try:
            svg = await run_in_threadpool(timeline_svg, source, job_id)
        except JobNotFound as exc:
            return Response(str(exc), status_code=404, media_type="text/plain", headers=HEADERS)
        return Response(svg, media_type="image/svg+xml", headers=HEADERS)

    async def cancel(request: Request) -> Response:
        source_name, job_id = request.path_params["source"], request.path_params["job_id"]
        sent = request.headers.get("x-mrkit-csrf", "")
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if not hmac.compare_digest(sent, csrf) or (origin is not None and origin != own):
            return JSONResponse(
                {"error": "refused: a cancel must come from this dashboard's own page"},
                status_code=403,
                headers=HEADERS,
            )

        def do() -> bool:
            return source_of(source_name).handle(job_id).cancel()

        try:
            done = await run_in_threadpool(do)
        except JobNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404, headers=HEADERS)
        except Exception as exc:
            label = source_of(source_name).label
            return JSONResponse({"error": unreachable(label, exc)}, status_code=502, headers=HEADERS)
        if done and on_cancel is not None:
            on_cancel(source_name, job_id)
        message = "cancel requested" if done else f"job {job_id} is not running: nothing to cancel"
        return JSONResponse({"cancelled": done, "message": message}, headers=HEADERS)

    routes = [
        Route("/", index),
        Route("/api/jobs", jobs_json),
        Route("/api/stream", jobs_stream),
        Route("/jobs/{source}/{job_id}", job_page),
        Route("/jobs/{source}/{job_id}/timeline.svg", timeline),
        Route("/api/jobs/{source}/{job_id}", job_json),
        Route("/api/jobs/{source}/{job_id}/stream", job_stream),
        Route("/api/jobs/{source}/{job_id}/cancel", cancel, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("mrkit.dashboard", "static")]), name="static"),
    ]
    app = Starlette(routes=routes)
    return _Guard(app, token=token, loopback_only=loopback_only)  # type: ignore[return-value]


class _Guard:
    """ASGI middleware: the Host check and the token (see the module docstring)."""

    def __init__(self, app: Any, *, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.token = token
        self.loopback_only = loopback_only

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host = host_name(request.headers.get("host", ""))
        if self.loopback_only and host not in LOOPBACK_HOSTS:
            response: Response = Response(
                f"this dashboard answers on loopback only, not for host {host!r}\n",
                status_code=421,
                media_type="text/plain",
            )
            await response(scope, receive, send)
            return
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, self.token):
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            cookie = request.cookies.get(COOKIE, "")
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not (hmac.compare_digest(cookie, self.token) or hmac.compare_digest(bearer, self.token)):
                response = Response(
                    "this dashboard needs its token: open the URL it printed (…?token=…), or send "
                    "Authorization: Bearer TOKEN\n",
                    status_code=401,
                    media_type="text/plain",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(header: str) -> str:
    """The host of a Host header, without its port (``[::1]:8000`` -> ``[::1]``)."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]
