"""Helpers of the dashboard tests: a dashboard on 127.0.0.1, HTTP calls to it, runs to watch."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mrkit
from mrkit.coordination.registry import registry_dir
from tests.jobs_for_tests import PACED


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """GET ``url``: (status, body, headers), for any status."""
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect())
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def csrf_of(page: str) -> str:
    marker = 'name="mrkit-csrf" content="'
    return page.split(marker, 1)[1].split('"', 1)[0]


def submit_paced(tmp_path: Path, lines: list[str], each: float, **options: Any) -> mrkit.JobHandle:
    """Submit the paced word count over ``lines`` in the background of this process."""
    source = tmp_path / "input.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options.setdefault("executor", "processes")
    options.setdefault("workers", 2)
    return mrkit.submit(PACED, str(source), params={"each": each}, quiet=True, **options)


def registry_running(job_id: str) -> bool:
    path = registry_dir(job_id) / "status.json"
    return path.exists() and json.loads(path.read_text())["state"] == "running"


def background(fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread
