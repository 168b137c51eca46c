"""The web UI served by `lumen relay` in headless Chromium: flows from two agents in one table, the two
ends of a cross-node flow in one row naming both nodes, pods of every node, and a banner naming the node
the relay cannot reach. Agents are the agent's real app over FlowStores the test fills."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from exporter.relay.discovery import Target
from tests.browser.harness import chromium, console_errors, detail_panel, screenshot, wait_until
from tests.relay_harness import Agent, Served, agents, free_port, relay
from tests.unit.exporter_fixtures import make_flow

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[Agent]]:
    with agents(["node-a", "node-b"]) as found:
        yield found


@pytest.fixture(scope="module")
def served(nodes: list[Agent]) -> Iterator[Served]:
    dead = Target("node-c", f"http://127.0.0.1:{free_port()}")
    with relay([*(Target(n.name, n.url) for n in nodes), dead]) as r:
        yield r


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def rows(browser: WebDriver) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#flows tbody tr')].map(r => r.innerText.replace(/\\s+/g, ' '))"
    )


def test_flows_of_two_agents_one_row_per_cross_node_flow_and_a_banner(browser, served, nodes):
    a, b = nodes
    a.store.add(make_flow(sport=31001, time_ns=time.time_ns()))  # stored before the page opens
    browser.get(served.url + "/flows?view=flows")  # each record: the relay pairs a cross-node flow's two ends
    browser.get_log("browser")
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live")
    banner = wait_until(lambda: browser.find_element(By.ID, "partial").text)
    assert "node-c" in banner and "not reachable" in banner
    b.store.add(make_flow(sport=31002, time_ns=time.time_ns()))
    now = time.time_ns()
    egress = make_flow(src="10.1.0.5", dst="10.2.0.7", sport=31003, dport=5432, src_pod=("shop", "web"),
                       dst_pod=None, time_ns=now)  # fmt: skip
    ingress = make_flow(src="10.1.0.5", dst="10.2.0.7", sport=31003, dport=5432, src_pod=None,
                        dst_pod=("db", "pg"), direction="ingress", verdict="DROPPED", type="DROP",
                        time_ns=now + 200_000)  # fmt: skip
    a.store.add(egress)
    b.store.add(ingress)
    wait_until(lambda: all(any(f":{p}" in r for r in rows(browser)) for p in (31001, 31002, 31003)))
    (pair,) = [r for r in rows(browser) if ":31003" in r]
    assert "shop/web" in pair and "db/pg" in pair and "DROPPED" in pair
    browser.find_element(By.XPATH, "//table[@id='flows']//tr[contains(., ':31003')]").click()
    panel = wait_until(
        lambda: detail_panel(browser) if browser.find_element(By.ID, "detail").is_displayed() else None
    )
    assert panel["Nodes"] == "node-a → node-b"
    assert panel["Ingress end"].startswith("node-b: DROPPED (policy_denied)")
    assert console_errors(browser) == []
    screenshot(browser, "relay-flows")


def test_endpoints_of_every_node_through_the_relay(browser, served):
    browser.get(served.url + "/endpoints")
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#endpoints tbody tr")) == 2)
    pods = [
        r.get_attribute("data-pod") for r in browser.find_elements(By.CSS_SELECTOR, "#endpoints tbody tr")
    ]
    assert pods == ["default/pod-node-a", "default/pod-node-b"]
    assert "node-c" in wait_until(lambda: browser.find_element(By.ID, "partial").text)


@pytest.mark.parametrize("mirror", [0, 64], ids=["asking", "copies"])
def test_older_flows_of_every_node_page_in_through_the_relay(browser, mirror):
    """The newest page from the relay's copies of each node's newest 64 flows (as `lumen relay` runs, with
    a smaller copy) or from asking the agents; older pages always from the agents."""
    with (
        agents(["page-a", "page-b"]) as (a, b),
        relay([Target(n.name, n.url) for n in (a, b)], mirror=mirror) as r,
    ):
        now = time.time_ns()
        sent = []
        for i in range(250):  # the two nodes' flows interleave in time
            f = make_flow(sport=40000 + i, src_pod=("page", "x"), time_ns=now - (250 - i) * 10**6)
            (a if i % 2 else b).store.add(f)
            sent.append(f)
        if mirror:  # the copies fill from the agents' streams (`lumen relay` starts them as it starts)
            wait_until(lambda: httpx.get(r.url + "/api/flows?limit=1", timeout=5) and from_copies(r.url))
        browser.get_log("browser")  # this page's messages only
        browser.get(r.url + "/flows?namespace=page")
        newest_first = [f.source.port for f in reversed(sent)]
        wait_until(lambda: ports(browser) == newest_first[:100])
        older = browser.find_element(By.ID, "older")
        for shown in (200, 250):
            older.click()
            wait_until(lambda n=shown: len(ports(browser)) == n)
        assert ports(browser) == newest_first, "every node's flows once, newest first, no gap"
        wait_until(lambda: older.text == "No older flows stored")
        assert console_errors(browser) == []
        assert from_copies(r.url) == (2 if mirror else 0), "the page's first answer, from the copies"
        browser.get("about:blank")  # the live stream ends before its relay does


def from_copies(url: str) -> int:
    """Pages the relay answered from its copies of the agents' flows."""
    series = 'lumen_relay_flow_pages_total{source="copies"}'
    lines = httpx.get(url + "/metrics", timeout=5).text.splitlines()
    return int(sum(float(line.split()[-1]) for line in lines if line.startswith(series)))


def ports(browser: WebDriver) -> list[int]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#flows tbody tr')]"
        ".map(r => Number(r.cells[1].innerText.split(':').pop()))"
    )
