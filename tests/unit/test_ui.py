"""The UI's server side: service-map aggregation, /api/map with the API's filters and token, the pages and
their assets served by the agent itself (nothing fetched from elsewhere)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from exporter import servicemap, ui
from exporter.api import create_app
from exporter.flows import FlowStore
from tests.unit.exporter_fixtures import NOW_NS, View, make_flow


def flows() -> list:
    return [
        make_flow(sport=1, dport=80, src_pod=("shop", "web"), dst_pod=("shop", "api"), nbytes=1000),
        make_flow(
            sport=2,
            dport=80,
            src_pod=("shop", "web"),
            dst_pod=("shop", "api"),
            nbytes=3000,
            time_ns=NOW_NS + 2 * 10**9,
        ),  # fmt: skip
        make_flow(
            sport=3,
            dport=5432,
            src_pod=("shop", "api"),
            dst_pod=("db", "pg"),
            verdict="DROPPED",
            type="DROP",
            packets=2,
            nbytes=120,
        ),  # fmt: skip
        make_flow(
            src="10.22.0.5",
            dst="1.1.1.1",
            sport=4,
            dport=53,
            proto="UDP",
            src_pod=("shop", "web"),
            dst_pod=None,
            nbytes=70,
        ),  # fmt: skip
    ]


def test_map_groups_pods_and_aggregates_edges_per_verdict():
    m = servicemap.build(flows())
    assert [n["id"] for n in m["nodes"]] == ["db/pg", "shop/api", "shop/web", "1.1.1.1"]
    nodes = {n["id"]: n for n in m["nodes"]}
    assert nodes["1.1.1.1"]["pod"] is False and nodes["1.1.1.1"]["namespace"] == ""
    web = nodes["shop/web"]
    assert (web["tx_packets"], web["tx_bytes"], web["rx_bytes"], web["flows"], web["dropped"]) == (
        3,
        4070,
        0,
        3,
        0,
    )
    assert (nodes["db/pg"]["rx_bytes"], nodes["db/pg"]["dropped"]) == (120, 1)
    edges = {(e["source"], e["destination"], e["verdict"]): e for e in m["edges"]}
    assert set(edges) == {
        ("shop/web", "shop/api", "FORWARDED"),
        ("shop/api", "db/pg", "DROPPED"),
        ("shop/web", "1.1.1.1", "FORWARDED"),
    }
    web_api = edges[("shop/web", "shop/api", "FORWARDED")]
    assert (web_api["flows"], web_api["bytes"], web_api["ports"]) == (2, 4000, [80])
    # 4000 bytes seen from the first flow's start (1 s before NOW) to the last event (NOW + 2 s): 3 s.
    assert web_api["bytes_per_s"] == pytest.approx(4000 / 3, abs=0.1)
    assert edges[("shop/api", "db/pg", "DROPPED")]["drop_reasons"] == ["policy_denied"]
    # A single short flow counts over at least one second, not over its few microseconds.
    assert edges[("shop/web", "1.1.1.1", "FORWARDED")]["bytes_per_s"] == 70


@pytest.fixture
def client() -> TestClient:
    view = View(FlowStore(100))
    view.store.add_many(flows())
    return TestClient(create_app(view, ui=ui.hook()))


def test_map_folds_multicast_and_link_local_into_one_node_each():
    group_flows = [
        make_flow(dst="224.0.0.22", dst_pod=None, dport=0),
        make_flow(dst="239.1.2.3", dst_pod=None, dport=0),
        make_flow(src="fe80::1", src_pod=None, dst="ff02::16", dst_pod=None, dport=0),
        make_flow(src="fe80::2", src_pod=None, dst="ff02::1:ff00:1", dst_pod=None, dport=0),
    ]
    m = servicemap.build(group_flows)
    nodes = {n["id"]: n for n in m["nodes"]}
    assert set(nodes) == {"default/client", "multicast", "link-local"}
    assert set(nodes["multicast"]["ips"]) == {"224.0.0.22", "239.1.2.3", "ff02::1:ff00:1", "ff02::16"}
    assert nodes["link-local"]["pod"] is False


def test_api_map_takes_the_flow_filters(client):
    body = client.get("/api/map?namespace=db").json()
    assert [(e["source"], e["destination"]) for e in body["edges"]] == [("shop/api", "db/pg")]
    assert body["stored"] == 4
    assert {e["verdict"] for e in client.get("/api/map?not_verdict=dropped").json()["edges"]} == {"FORWARDED"}
    resp = client.get("/api/map?port=http")
    assert resp.status_code == 400 and "port 'http'" in resp.json()["detail"]


def test_api_map_requires_the_token_when_the_agent_has_one():
    app = create_app(View(), token="s3cret", ui=ui.hook("s3cret"))
    c = TestClient(app)
    assert c.get("/api/map").status_code == 401
    assert c.get("/api/map", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # The pages hold no data: the browser asks for the token when the API answers 401.
    assert c.get("/flows").status_code == 200


def test_pages_are_served_with_navigation_and_local_assets(client):
    assert client.get("/", follow_redirects=False).headers["location"] == "/flows"
    for page, title in ui.PAGES.items():
        resp = client.get(f"/{page}")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        html = resp.text
        assert f"<title>{title} · Lumen</title>" in html
        assert f'<a href="/{page}" aria-current="page">' in html
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert client.get(asset).status_code == 200, asset
    # The filter bar offers every criterion the API and the CLI accept.
    flows_html = client.get("/flows").text
    for name in ("from_pod", "to_port", "not_label", "since"):
        assert f'value="{name}=' in flows_html


def test_nothing_is_fetched_from_another_host():
    """Works offline: no asset or script refers to a URL outside the agent (the SVG namespace is a name)."""
    for path in ui.WEB_DIR.rglob("*"):
        if path.is_file() and "node_modules" not in path.parts:
            urls = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", path.read_text())
            assert set(urls) <= {"http://www.w3.org/2000/svg"}, (path, urls)


def test_an_unknown_page_gets_an_html_404_and_an_unknown_api_path_json(client):
    resp = client.get("/flow", headers={"Accept": "text/html"})
    assert resp.status_code == 404 and resp.headers["content-type"].startswith("text/html")
    assert "<title>Not found · Lumen</title>" in resp.text and "<code>/flow</code>" in resp.text
    for page in ui.PAGES:
        assert f'<a href="/{page}">' in resp.text
    for path in ("/api/nope", "/api/flows/nope", "/static/nope.js", "/metrics/x", "/docs/assets/nope.js"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert resp.json() == {"detail": "Not Found"}, path
    # other errors keep their JSON, also on page paths
    assert client.get("/api/flows?port=http").json()["detail"].startswith("port 'http'")
    assert client.post("/flows").status_code == 405


def _offline_docs(c: TestClient) -> None:
    resp = c.get("/docs")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    refs = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", resp.text)
    assert "/openapi.json" in refs and "//" not in resp.text  # nothing from another host
    for ref in refs:  # every script, style and icon from this server, and there
        assert ref.startswith("/"), ref
        assert c.get(ref).status_code == 200, ref
    assert c.get("/redoc").status_code == 404  # FastAPI's ReDoc needs a CDN: off


def test_docs_work_offline_with_bundled_assets(client):
    _offline_docs(client)
    assert "javascript" in client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"]


def test_relay_docs_work_offline_too():
    from exporter.relay import discovery
    from exporter.relay.app import create_app as relay_app
    from exporter.relay.fanout import Fanout
    from exporter.relay.service import Relay

    relay = Relay(Fanout(discovery.Static([]), None, 1.0))
    _offline_docs(TestClient(relay_app(relay)))
    # with its UI, the relay answers an unknown page with the same HTML 404
    c = TestClient(relay_app(relay, ui=ui.hook(with_map=False)))
    resp = c.get("/nope")
    assert resp.status_code == 404 and "Page not found" in resp.text
    assert c.get("/api/nope").json() == {"detail": "Not Found"}


def test_without_the_assets_docs_are_off_not_blank(monkeypatch):
    from exporter import docs

    monkeypatch.setattr(docs, "assets_dir", lambda: None)
    c = TestClient(create_app(View()))
    assert c.get("/docs").status_code == 404
    assert c.get("/openapi.json").status_code == 200
