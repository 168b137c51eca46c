"""JSON bodies for the flow routes, encoded with orjson.

An /api/flows answer is about a hundred flow dicts: the standard library encodes one in about 0.4 ms,
orjson in 0.04 ms (bench/cluster/relay.py: the agent answers it, the relay decodes three and encodes one).
Same JSON text as Starlette's JSONResponse for the plain dicts these routes hold. The agent also keeps
each served flow's bytes (RowCache) and splices them into the answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson
from fastapi.responses import JSONResponse, Response


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def loads(body: bytes | str) -> Any:
    """JSON text -> Python values; raises ValueError (orjson.JSONDecodeError) on bad input."""
    return orjson.loads(body)


class Encodable(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class RowCache:
    """Each served flow's JSON, kept for when it is served again: a UI polls the newest page, a relay
    asks every agent for its newest rows on every query, so most rows of an answer were encoded for the
    previous one. Keyed by the object: the store never changes a stored Flow (a new event is a new
    Flow), so its bytes stay right. Bounded, least recently served out first."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._rows: OrderedDict[int, tuple[Encodable, bytes]] = OrderedDict()
        self._lock = threading.Lock()  # sync routes run on worker threads

    def encode(self, items: Iterable[Encodable]) -> list[bytes]:
        out, fresh = [], []
        with self._lock:
            for item in items:
                hit = self._rows.get(id(item))
                if hit is not None and hit[0] is item:
                    self._rows.move_to_end(id(item))
                    out.append(hit[1])
                else:
                    out.append(b"")
                    fresh.append((len(out) - 1, item))
        for i, item in fresh:  # outside the lock: the encoding is the work
            out[i] = orjson.dumps(item.to_dict(), option=orjson.OPT_NON_STR_KEYS)
        if fresh:
            with self._lock:
                for i, item in fresh:
                    self._rows[id(item)] = (item, out[i])  # holding the item keeps its id unique
                while len(self._rows) > self.size:
                    self._rows.popitem(last=False)
        return out

    def __len__(self) -> int:
        return len(self._rows)


def rows_response(name: str, rows: Sequence[bytes], rest: dict[str, Any]) -> Response:
    """`{name: [rows...], **rest}` with the rows' encoded JSON spliced in as they are."""
    tail = orjson.dumps(rest, option=orjson.OPT_NON_STR_KEYS)  # "{...}": its fields follow the rows
    head = b'{"' + name.encode() + b'":[' + b",".join(rows) + b"]"
    body = head + (b"," + tail[1:] if len(tail) > 2 else b"}")
    return Response(body, media_type="application/json")
