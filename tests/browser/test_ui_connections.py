"""Connections, labels, ICMP names and the folded service map in headless Chromium (issue 15): the API, the
UI and the browser are real, the flows come from a FlowStore each test fills."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from exporter.flows import Flow, FlowStore
from tests.browser.harness import Server, chromium, console_errors, detail_panel, screenshot, wait_until
from tests.unit.exporter_fixtures import View, make_flow

pytestmark = pytest.mark.browser

_ports = itertools.count(41000)
WEB, API = ("conn", "web"), ("conn", "api")


def pair(**kw: Any) -> tuple[Flow, Flow]:
    """A request (web -> api:80 by default) and its reply, seen now."""
    sport, t = next(_ports), time.time_ns()
    base = {"src_pod": WEB, "dst_pod": API, "dport": 80, **kw}
    request = make_flow(sport=sport, time_ns=t, packets=3, nbytes=300, **base)
    reply = make_flow(
        src=request.destination.ip, dst=request.source.ip, sport=request.destination.port, dport=sport,
        src_pod=base["dst_pod"], dst_pod=base["src_pod"], time_ns=t + 1000, packets=2, nbytes=2000,
        is_reply=True, labels=kw.get("labels"),
    )  # fmt: skip
    return request, reply


@pytest.fixture(scope="module")
def node() -> View:
    return View(FlowStore(10000))


@pytest.fixture(scope="module")
def server(node: View) -> Iterator[Server]:
    with Server(node) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def open_page(browser: WebDriver, server: Server, path: str) -> None:
    browser.get(server.url + path)
    browser.get_log("browser")
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live")


def rows(browser: WebDriver) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#flows tbody tr')].map(r => r.innerText.replace(/\\s+/g, ' '))"
    )


def test_a_request_and_its_reply_are_one_row_and_halves_on_request(browser, server, node):
    open_page(browser, server, "/flows?namespace=conn")
    request, reply = pair()
    node.store.add_many([request, reply])
    port = f":{request.source.port}"
    row = wait_until(lambda: next((r for r in rows(browser) if port in r), None))
    assert len([r for r in rows(browser) if port in r]) == 1, "one row for both halves"
    assert f"conn/web 10.22.0.5{port} conn/api 10.22.0.6:80" in row, "client then server"
    assert row.endswith("5 2.3 kB ↔ yes"), "packets and bytes of both halves"
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#flows thead th")]
    assert headers[1:3] == ["Client", "Server"]
    browser.find_element(By.XPATH, f"//table[@id='flows']//tr[contains(., '{port}')]").click()
    d = detail_panel(browser)
    assert d["Request"].startswith("3 pkts") and d["Reply"].startswith("2 pkts") and d["Server port"] == "80"
    screenshot(browser, "connections")
    # halves on request: kept in the URL, one row per half, the reply marked
    browser.find_element(By.ID, "halves").click()
    wait_until(lambda: len([r for r in rows(browser) if port in r]) == 2)
    assert parse_qs(urlparse(browser.current_url).query)["view"] == ["flows"]
    assert any(port in r and r.endswith("NEW ↩ reply") for r in rows(browser))
    browser.back()
    wait_until(lambda: len([r for r in rows(browser) if port in r]) == 1)
    assert not browser.find_element(By.ID, "halves").is_selected()
    # a reply arriving later updates the connection's row in place
    late_req, late_reply = pair(dport=8080)
    node.store.add(late_req)
    lport = f":{late_req.source.port}"
    wait_until(lambda: any(lport in r and r.endswith("→ none") for r in rows(browser)))
    node.store.add(late_reply)
    wait_until(lambda: any(lport in r and r.endswith("↔ yes") for r in rows(browser)))
    assert len([r for r in rows(browser) if lport in r]) == 1
    assert console_errors(browser) == []


def test_labels_are_shown_and_filter_the_table(browser, server, node):
    labelled, _ = pair(labels={"app": "shop", "tier": "front"})
    other, _ = pair()
    node.store.add_many([labelled, other])
    open_page(browser, server, "/flows?namespace=conn")
    extra = browser.find_element(By.ID, "f-extra")
    extra.send_keys("label=app=shop")
    extra.send_keys(Keys.ENTER)
    lport, oport = f":{labelled.source.port}", f":{other.source.port}"
    wait_until(lambda: any(lport in r for r in rows(browser)))
    assert not any(oport in r for r in rows(browser)), "the label filter keeps only labelled pods"
    browser.find_element(By.XPATH, f"//table[@id='flows']//tr[contains(., '{lport}')]").click()
    assert detail_panel(browser)["Client labels"] == "app=shop, tier=front"
    cell = browser.find_element(By.XPATH, f"//table[@id='flows']//tr[contains(., '{lport}')]/td[2]")
    assert cell.get_attribute("title") == "app=shop tier=front"
    assert console_errors(browser) == []


def test_icmp_by_name_without_ports_and_local_traffic_behind_a_checkbox(browser, server, node):
    t = time.time_ns()
    ident = next(_ports)
    echo = make_flow(proto="ICMP", message=(8, 0, ident), src_pod=WEB, dst_pod=API, time_ns=t)
    answer = make_flow(
        "10.22.0.6", "10.22.0.5", proto="ICMP", message=(0, 0, ident), src_pod=API, dst_pod=WEB,
        time_ns=t + 1000, is_reply=True,
    )  # fmt: skip
    solicit = make_flow(
        "fe80::1", "ff02::1:ff00:6", proto="ICMPv6", message=(135, 0, 0), src_pod=None, dst_pod=None,
        time_ns=t + 2000,
    )  # fmt: skip
    node.store.add_many([echo, answer, solicit])
    open_page(browser, server, "/flows?protocol=icmp&protocol=icmpv6")
    row = wait_until(lambda: next((r for r in rows(browser) if "echo-request" in r), None))
    assert "conn/web 10.22.0.5 conn/api 10.22.0.6 ICMP echo-request" in row, "named, and no :port"
    assert row.endswith("↔ yes"), "the echo reply is the same connection"
    assert not any("neighbor-solicitation" in r for r in rows(browser)), "multicast hidden by default"
    browser.find_element(By.ID, "show-special").click()
    wait_until(lambda: any("ICMPv6 neighbor-solicitation" in r for r in rows(browser)))
    assert "show_special" in parse_qs(urlparse(browser.current_url).query)
    assert any("[ff02::1:ff00:6]" in r for r in rows(browser)), "IPv6 in brackets, no port"
    assert console_errors(browser) == []


def test_the_map_draws_one_edge_per_client_and_server_with_the_server_port(browser, server, node):
    flows = [f for _ in range(4) for f in pair(src_pod=("fold", "web"), dst_pod=("fold", "api"))]
    flows.append(
        make_flow("fe80::5", "ff02::16", 0, 0, proto="ICMPv6", src_pod=("fold", "web"), dst_pod=None)
    )
    node.store.add_many(flows)
    browser.get(server.url + "/map?namespace=fold")
    edges = "#edges tbody tr"
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, edges))
    cells = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(r => [...r.cells].map(c => c.innerText))",
        edges,
    )
    assert len(cells) == 1, f"one edge, replies folded onto it, link-local hidden: {cells}"
    (edge,) = cells
    assert edge[:3] == ["fold/web", "fold/api", "FORWARDED"] and edge[6] == "TCP 80", "the server port only"
    assert edge[4] == "8", "four connections, both halves"
    assert browser.find_element(By.CSS_SELECTOR, "#edges thead th:last-child").is_displayed()
    browser.find_element(By.ID, "show-special").click()
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, edges)) == 2)
    assert browser.find_elements(By.CSS_SELECTOR, '#map a.edge[data-destination="multicast"]')
    screenshot(browser, "map-folded")
    assert console_errors(browser) == []
