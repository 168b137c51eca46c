"""The UI's time range over the flow history: the Flows page shows a past window from the history (and
says so), the flow detail links to the flow's own time window, and the Service map draws a past window
from the history's sums, its edges opening that window's flows. Headless Chromium against the API over a
memory store and a SQLite history this module fills."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from exporter.flows import FlowStore
from exporter.history.sink import HistorySink
from exporter.history.sqlite import SqliteHistory
from tests.browser.harness import Server, chromium, console_errors, detail_panel, wait_until
from tests.unit.exporter_fixtures import View, make_flow

pytestmark = pytest.mark.browser

HOUR = 3600 * 10**9


class HistoryView(View):
    def __init__(self, store: FlowStore, history: SqliteHistory) -> None:
        super().__init__(store)
        self.history = history


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HistoryView]:
    now = time.time_ns()
    history = SqliteHistory(str(tmp_path_factory.mktemp("hs-ui") / "history.sqlite"))
    history.created_ns = now - 5 * HOUR
    sink = HistorySink(history, flush_interval_s=0.05)
    # two and a half hours ago: shop/web -> shop/db, one a minute for 20 minutes; one dropped probe
    old: list[Any] = [
        make_flow(
            sport=30000 + i,
            dport=5432,
            time_ns=now - 150 * 60 * 10**9 + i * 60 * 10**9,
            type="END",
            src_pod=("shop", "web"),
            dst_pod=("shop", "db"),
        )
        for i in range(20)
    ]
    old.append(
        make_flow(sport=39999, dport=5432, time_ns=now - 140 * 60 * 10**9, type="DROP", verdict="DROPPED",
                  src_pod=("ops", "probe"), dst_pod=("shop", "db"))
    )  # fmt: skip
    sink.on_flows(old)
    assert sink.flush()
    store = FlowStore(1000)
    store.on_flows([make_flow(sport=1, time_ns=time.time_ns(), src_pod=("live", "a"), dst_pod=("live", "b"))])
    try:
        yield HistoryView(store, history)
    finally:
        sink.close()


@pytest.fixture(scope="module")
def server(node: HistoryView) -> Iterator[Server]:
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


def test_the_flows_page_shows_a_past_window_from_the_history(browser, server):
    browser.get(server.url + "/flows")
    wait_until(lambda: source_ports(browser) == [1])  # live: memory
    form = browser.find_element(By.ID, "filters")
    form.find_element(By.NAME, "since").send_keys("3h")
    form.find_element(By.NAME, "until").send_keys("2h")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(lambda: len(source_ports(browser)) == 21)
    assert source_ports(browser)[0] == 30019 and 39999 in source_ports(browser)
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)
    assert params["since"] == ["3h"] and params["until"] == ["2h"]
    assert "from the flow history" in browser.find_element(By.ID, "counts").text
    # the detail panel links to the flow's own time window
    browser.find_element(By.CSS_SELECTOR, "#flows tbody tr").click()
    wait_until(lambda: "Time window" in detail_panel(browser))
    href = browser.find_element(By.ID, "flow-window").get_attribute("href")
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)
    assert set(q) == {"since", "until", "ip"} and q["since"][0] < q["until"][0]
    browser.get(href)
    wait_until(lambda: source_ports(browser) and all(p >= 30000 for p in source_ports(browser)))
    assert console_errors(browser) == []


def test_the_map_draws_a_past_window_from_the_history(browser, server):
    browser.get(server.url + "/map")
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#map a.edge"))
    assert "live/a" in browser.find_element(By.ID, "edges").text
    form = browser.find_element(By.ID, "range-form")
    form.find_element(By.NAME, "since").send_keys("3h")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    summary = browser.find_element(By.ID, "map-summary")
    wait_until(lambda: "flow history" in summary.text)
    edges = browser.find_element(By.ID, "edges").text
    assert "shop/web" in edges and "ops/probe" in edges and "live/a" not in edges
    link = browser.find_element(By.CSS_SELECTOR, "#map a.edge[data-verdict=DROPPED]").get_dom_attribute(
        "href"
    )
    assert "since=3h" in link and "from_pod=ops%2Fprobe" in link
    browser.find_element(By.ID, "range-live").click()
    wait_until(lambda: "live/a" in browser.find_element(By.ID, "edges").text)
    assert console_errors(browser) == []
