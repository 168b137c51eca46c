"""JSON bodies for the flow routes, encoded with orjson.

An /api/flows answer is about a hundred flow dicts: the standard library encodes one in about 0.4 ms,
orjson in 0.04 ms (bench/cluster/relay.py: the agent answers it, the relay decodes three and encodes one).
Same JSON text as Starlette's JSONResponse for the plain dicts these routes hold.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def loads(body: bytes | str) -> Any:
    """JSON text -> Python values; raises ValueError (orjson.JSONDecodeError) on bad input."""
    return orjson.loads(body)
