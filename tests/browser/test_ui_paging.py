"""The Flows page past its first 100 rows (older flows paged in with the API's cursor, live flows still on
top), the policy column, human durations, the HTML 404 page and /docs working with the network closed.
Headless Chromium against the agent's app over a FlowStore this module fills."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from exporter.flows import Flow, FlowStore
from tests.browser.harness import Server, chromium, console_errors, detail_panel, screenshot, wait_until
from tests.unit.exporter_fixtures import View, make_flow

pytestmark = pytest.mark.browser

_ports = itertools.count(40000)


def flow(**kw: Any) -> Flow:
    kw.setdefault("sport", next(_ports))
    kw.setdefault("time_ns", time.time_ns())
    return make_flow(**kw)


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


def source_ports(browser: WebDriver) -> list[int]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#flows tbody tr')]"
        ".map(r => Number(r.cells[1].innerText.split(':').pop()))"
    )


def test_older_flows_page_in_with_the_cursor_below_the_live_rows(browser, server, node):
    sent = [flow(src_pod=("page", "a"), dst_pod=("page", "b")) for _ in range(350)]
    node.store.add_many(sent)
    browser.get(server.url + "/flows?namespace=page")
    newest_first = [f.source.port for f in reversed(sent)]
    wait_until(lambda: source_ports(browser) == newest_first[:100])
    older = browser.find_element(By.ID, "older")
    assert older.text == "Load 100 older flows" and older.is_enabled()
    for shown in (200, 300, 350):
        older.click()
        wait_until(lambda n=shown: len(source_ports(browser)) == n)
    assert source_ports(browser) == newest_first  # every stored flow once, newest first, no gap
    wait_until(lambda: older.text == "No older flows stored")
    assert not older.is_enabled()
    assert "250 older loaded" in browser.find_element(By.ID, "counts").text
    # live flows still arrive on top, and the paged-in rows stay
    node.store.add(live := flow(src_pod=("page", "a"), dst_pod=("page", "b")))
    wait_until(lambda: source_ports(browser)[:1] == [live.source.port])
    assert source_ports(browser)[1:] == newest_first
    assert console_errors(browser) == []


def test_paging_keeps_the_filters(browser, server, node):
    node.store.add_many(
        [flow(src_pod=("keep", "a"), dst_pod=("keep", "b"), dport=p % 2 + 80) for p in range(250)]
    )
    browser.get(server.url + "/flows?namespace=keep&to_port=81")
    wait_until(lambda: len(source_ports(browser)) == 100)
    browser.find_element(By.ID, "older").click()
    wait_until(lambda: browser.find_element(By.ID, "older").text == "No older flows stored")
    assert len(source_ports(browser)) == 125
    assert all(":81" in r for r in browser.execute_script(
        "return [...document.querySelectorAll('#flows tbody tr')].map(r => r.cells[2].innerText)"
    ))  # fmt: skip


def test_policy_column_and_human_durations(browser, server, node):
    f = flow(src_pod=("pol", "web"), dst_pod=("pol", "api"), dport=8080)
    f.ingress_policy = "pol/allow-web"
    f.start_ns = f.end_ns - 127_044_825_000
    d = flow(src_pod=("pol", "probe"), dst_pod=("pol", "api"), verdict="DROPPED", type="DROP")
    node.store.add_many([f, d])
    browser.get(server.url + "/flows?namespace=pol")
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#flows thead th")]
    assert "Policy" in headers
    col = headers.index("Policy")

    def policy_cells() -> list[str]:
        return browser.execute_script(
            f"return [...document.querySelectorAll('#flows tbody tr')].map(r => r.cells[{col}].innerText)"
        )

    wait_until(lambda: len(policy_cells()) == 2)
    assert policy_cells() == ["no policy allows ingress", "allowed by pol/allow-web"]
    browser.find_element(By.CSS_SELECTOR, "#flows tbody tr:nth-child(2)").click()
    detail = detail_panel(browser)
    assert detail["Duration"] == "2m 7s" and detail["Policy"] == "allowed by pol/allow-web"
    screenshot(browser, "flows-policy-column")
    assert console_errors(browser) == []


def test_an_unknown_page_links_back_to_the_ui(browser, server):
    browser.get(server.url + "/flowz")
    assert browser.title == "Not found · Lumen"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Page not found"
    # the browser notes the 404 status, nothing else goes wrong
    assert [e["message"].split(" - ")[0] for e in console_errors(browser)] == [server.url + "/flowz"]
    browser.find_element(By.LINK_TEXT, "Flows").click()
    wait_until(lambda: browser.current_url.endswith("/flows"))


def test_docs_render_with_the_network_closed(browser, server):
    browser.get_log("browser")  # earlier pages' messages
    browser.get(server.url + "/docs")
    get_flows = wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#operations-flows-flows_api_flows_get"), timeout=20
    )
    assert get_flows[0].is_displayed()
    assert "Lumen agent" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    screenshot(browser, "docs")
    assert console_errors(browser) == []


def test_older_flows_continue_below_what_live_rows_pushed_out(browser, server, node):
    """Live rows beyond the table's 500 push the bottom out; older flows then continue from the oldest row
    still shown (no gap, no row twice), and page on with the cursor."""
    stored = [flow(src_pod=("trim", "a"), dst_pod=("trim", "b")) for _ in range(150)]
    node.store.add_many(stored)
    browser.get(server.url + "/flows?namespace=trim")
    wait_until(lambda: len(source_ports(browser)) == 100)
    live = []
    for _ in range(450):  # 100 + 450 > 500: the 50 oldest rows go
        node.store.add(f := flow(src_pod=("trim", "a"), dst_pod=("trim", "b")))
        live.append(f)
    everything = [f.source.port for f in reversed(stored + live)]  # newest first
    wait_until(lambda: source_ports(browser) == everything[:500], timeout=20)
    older = browser.find_element(By.ID, "older")
    older.click()
    # the page continues from the oldest row's time, which the JSON gives to the microsecond: the row at
    # that boundary may come again (drawn once)
    wait_until(lambda: len(source_ports(browser)) >= 599)
    older.click()
    wait_until(lambda: older.text == "No older flows stored")
    assert source_ports(browser) == everything
    assert console_errors(browser) == []
