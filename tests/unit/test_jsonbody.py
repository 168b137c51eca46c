"""The agent's flow bodies: orjson text, each served flow's bytes kept and spliced into the next answer."""

from __future__ import annotations

import json

from exporter.jsonbody import RowCache, rows_response
from tests.unit.exporter_fixtures import make_flow


def test_spliced_rows_read_back_as_the_flows_and_the_other_fields():
    flows = [make_flow(sport=40000 + i, verdict="DROPPED" if i % 2 else "FORWARDED") for i in range(3)]
    resp = rows_response("flows", RowCache().encode(flows), {"stored": 3, "cursor": None, "source": "ü"})
    assert json.loads(resp.body) == {
        "flows": [f.to_dict() for f in flows],
        "stored": 3,
        "cursor": None,
        "source": "ü",
    }
    assert resp.media_type == "application/json"
    assert json.loads(rows_response("flows", [], {}).body) == {"flows": []}


def test_a_flow_served_again_is_not_encoded_again():
    cache = RowCache()
    flow = make_flow()
    first = cache.encode([flow])[0]
    assert cache.encode([flow])[0] is first
    other = make_flow(sport=1)  # an equal-looking but distinct record has bytes of its own
    assert json.loads(cache.encode([other])[0]) == other.to_dict()


def test_the_cache_keeps_the_most_recently_served():
    cache = RowCache(size=2)
    a, b, c = (make_flow(sport=p) for p in (1, 2, 3))
    kept = cache.encode([a])[0]
    cache.encode([b])
    cache.encode([a])  # a served again: b is now the oldest
    cache.encode([c])
    assert len(cache) == 2
    assert cache.encode([a])[0] is kept
