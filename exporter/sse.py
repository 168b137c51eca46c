"""Server-sent events, the client side: (event, data) pairs from the text lines of a stream. Used by the
CLI (which must not import the server's FastAPI) and the tests."""

from __future__ import annotations

from collections.abc import Iterator


def iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
