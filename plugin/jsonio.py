"""JSON for the plugin's hot path, on the C `_json` module.

`import json` pulls in `re` and `enum` (about 10 ms on this machine, as much as the interpreter's own
start-up); the C scanner and string encoder underneath need neither. Values are the JSON subset the CNI
protocol uses: dict, list, str, int, float, bool, None.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]


#: Deepest nesting accepted. CNI documents are a few levels deep; the limit keeps the plugin's own
#: recursive walks (result merge, encoding) far from the interpreter's recursion limit.
MAX_DEPTH = 128
_INF = float("inf")


def _parse_constant(name: str) -> float:
    # json accepts NaN/Infinity (not JSON per RFC 8259); the plugin could not write them back out.
    raise ValueError(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


class _Context:
    """The attributes `_json.make_scanner` reads from a `json.JSONDecoder`."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_parse_float)
    parse_int = int
    parse_constant = staticmethod(_parse_constant)
    memo: dict[str, str] = {}


_WS = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """The value of one JSON document (UTF-8 when given bytes). Every way the input can be wrong is a
    ValueError: bad syntax, bad UTF-8, NaN/Infinity, numbers out of range, nesting past MAX_DEPTH."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if _json is None:  # pragma: no cover
        import json

        return json.loads(text)
    scan = _json.make_scanner(_Context)  # type: ignore[arg-type]  # duck-typed JSONDecoder
    start = len(text) - len(text.lstrip(_WS))
    try:
        try:
            value, end = scan(text, start)
        except SystemError:
            # The C scanner raises its syntax errors as json.decoder.JSONDecodeError, which it only
            # looks up in sys.modules: without `import json` (kept off the hot path) it fails with a
            # SystemError instead. Load it for the error path only; the rescan raises the real error.
            import json.decoder  # noqa: F401

            value, end = scan(text, start)
    except StopIteration as e:
        raise ValueError(f"Expecting value: char {e.value}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if text[end:].strip(_WS):
        raise ValueError(f"Extra data: char {end}")
    # Only a document with enough brackets can be too deep: skip the walk for everyday configs.
    if text.count("[", start, end) + text.count("{", start, end) > MAX_DEPTH:
        _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def dumps(value: Any) -> str:
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_json.encode_basestring_ascii(value) if _json else repr(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not valid JSON")
        out.append(float.__repr__(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, (k, v) in enumerate(value.items()):
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
            if i:
                out.append(", ")
            _encode(k, out)
            out.append(": ")
            _encode(v, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(", ")
            _encode(v, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
