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
