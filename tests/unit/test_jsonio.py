"""The plugin's JSON codec must agree with the stdlib json on everything CNI sends and receives."""

import json

import pytest

from plugin import jsonio

SAMPLES = [
    {},
    [],
    {"cniVersion": "1.1.0", "name": "n", "plugins": [{"type": "lumen", "mtu": 1400, "ok": True, "x": None}]},
    {"unicode": "péché ☃ \u2028", "esc": 'a"b\\c\n\t', "neg": -5, "float": 1.5, "big": 2**63},
    [1, [2, [3, {"a": [False, None]}]]],
]


@pytest.mark.parametrize("value", SAMPLES)
def test_round_trip_matches_stdlib(value):
    assert jsonio.loads(jsonio.dumps(value)) == value
    assert json.loads(jsonio.dumps(value)) == value
    assert jsonio.loads(json.dumps(value)) == value
    assert jsonio.loads(json.dumps(value, indent=2).encode()) == value


@pytest.mark.parametrize("bad", ["", "   ", "{", '{"a":1} x', "[1,]", "{'a': 1}", "nul"])
def test_invalid_json_raises_value_error(bad):
    with pytest.raises(ValueError):
        jsonio.loads(bad)


def test_unserialisable_values_are_refused():
    with pytest.raises(TypeError):
        jsonio.dumps({"a": object()})
    with pytest.raises(ValueError):
        jsonio.dumps(float("nan"))


# -- differential: jsonio against the stdlib on everything hypothesis can make -----------------------

import sys  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)
# Fragments of JSON, so random documents get past the first character often.
JSON_ISH = st.lists(
    st.sampled_from(list('{}[],:"\\ 0123456789.eE+-tfnrul') + ["true", "null", "NaN", "\\u", "\\ud800"])
    | st.text(max_size=3),
    max_size=30,
).map("".join)


@contextmanager
def stdlib_json_unloaded():
    """The plugin process never imports json; the C scanner behaves differently then (issue 11)."""
    saved = sys.modules.pop("json.decoder")
    try:
        yield
    finally:
        sys.modules["json.decoder"] = saved


def outcome(fn, arg):
    try:
        return ("value", fn(arg))
    except ValueError:
        return ("error", None)


def same_or_decoding_error(data: str | bytes) -> None:
    """jsonio gives json's value or a ValueError; never another exception, never a different value."""
    text = data
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")  # the plugin reads UTF-8 (json would also guess UTF-16/32)
        except UnicodeDecodeError:
            with stdlib_json_unloaded(), pytest.raises(ValueError):
                jsonio.loads(data)
            return
    with stdlib_json_unloaded():
        ours = outcome(jsonio.loads, data)
    try:
        theirs = outcome(json.loads, text)
    except RecursionError:
        theirs = ("error", None)
    if ours[0] == "value":
        assert theirs == ours
    # else: a decoding error. jsonio refuses a few documents json takes (NaN, 1e400, > MAX_DEPTH).


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_like_json_or_fail_with_value_error(data):
    same_or_decoding_error(data)


@settings(max_examples=400, deadline=None)
@given(JSON_ISH)
def test_json_like_text_decodes_like_json_or_fails_with_value_error(text):
    same_or_decoding_error(text)
    same_or_decoding_error(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from([None, 2]))
def test_valid_documents_give_the_same_value(value, indent):
    doc = json.dumps(value, indent=indent)
    with stdlib_json_unloaded():
        assert jsonio.loads(doc) == value
        assert jsonio.loads(doc.encode()) == value
        assert json.loads(jsonio.dumps(value)) == value


@pytest.mark.parametrize(
    "doc",
    ["NaN", "[Infinity]", "-Infinity", "1e400", "[-1e999]", "[" * 100_000, "[" * 200 + "]" * 200],
)
def test_documents_the_plugin_could_not_write_back_are_decoding_errors(doc):
    with stdlib_json_unloaded(), pytest.raises(ValueError):
        jsonio.loads(doc)


def test_nesting_up_to_the_limit_is_accepted():
    doc = "[" * jsonio.MAX_DEPTH + "]" * jsonio.MAX_DEPTH
    assert jsonio.loads(doc) is not None
    with pytest.raises(ValueError):
        jsonio.loads("[" + doc + "]")
