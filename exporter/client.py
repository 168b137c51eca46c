"""The agent's HTTP client for the CLI: JSON requests and the SSE stream, stdlib only (urllib), so that
`lumen observe` starts without the server's imports (FastAPI, uvicorn, prometheus_client)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlencode

from exporter.sse import iter_sse


class ApiError(Exception):
    """The agent answered with an error, or could not be reached; the message says which."""


def open_url(
    server: str,
    path: str,
    params: Sequence[tuple[str, str]],
    token: str | None,
    timeout: float | None,
    data: bytes | None = None,
) -> Any:
    import http.client  # with email and ssl: only when a request is made (not for --help)
    import urllib.error
    import urllib.request

    url = server.rstrip("/") + path + ("?" + urlencode(params) if params else "")
    try:
        req = urllib.request.Request(
            url, data=data, headers={"Accept": "application/json, text/event-stream"}
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise ApiError(f"{url}: {exc.code} {detail}") from None
    except urllib.error.URLError as exc:
        raise ApiError(
            f"{server}: cannot reach the agent ({exc.reason}); is `lumen agent` running?"
        ) from None
    except (ValueError, OSError, http.client.HTTPException) as exc:  # a bad URL or header, a reset
        raise ApiError(f"{server}: {exc}") from None


def get_json(
    server: str,
    path: str,
    params: Sequence[tuple[str, str]] = (),
    token: str | None = None,
    timeout: float = 30,
    data: bytes | None = None,
) -> Any:
    with open_url(server, path, params, token, timeout, data=data) as resp:
        try:
            return json.load(resp)
        except ValueError:
            raise ApiError(f"{server}{path}: the answer is not JSON (is this a Lumen agent?)") from None


def stream(
    server: str, path: str, params: Sequence[tuple[str, str]], token: str | None
) -> Iterator[tuple[str, str]]:
    """(event, data) of a server-sent event stream, until the server closes it."""
    import http.client

    with open_url(server, path, params, token, None) as resp:
        lines = (raw.decode("utf-8", "replace").rstrip("\r\n") for raw in resp)
        try:
            yield from iter_sse(lines)
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"{server}: the stream broke ({exc})") from None
