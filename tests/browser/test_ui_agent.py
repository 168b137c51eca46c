"""The UI of a real `lumen agent` (BPF datapath, pods wired by the plugin) in headless Chromium: traffic the
test sends between two pods shows up live in the Flows table and as an edge on the map, and a connection
the agent's policy denies shows as DROPPED with its reason and the policy verdict."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.harness import chromium, console_errors, detail_panel, screenshot, wait_until
from tests.cni_harness import Pod, ns_exec
from tests.e2e.test_agent import Agent, agent_with_pods
from tests.privileged import dp_tools as t

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.bpf, pytest.mark.netns]


@dataclass
class Live:
    agent: Agent
    a: Pod
    b: Pod
    namespace: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("ui-agent")
    namespace = f"ui{secrets.token_hex(2)}"
    policies = workdir / "policies"
    policies.mkdir()
    # the namespace's pods admit UDP only: the test's TCP connection is dropped
    (policies / "udp-only.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: udp-only, namespace: {namespace}}}\n"
        "spec: {podSelector: {}, ingress: [{ports: [{protocol: UDP}]}]}\n"
    )
    pods = [("client", namespace), ("server", namespace)]
    with agent_with_pods(workdir, pods, args=["--policy-dir", str(policies)]) as (_, agent, (a, b)):
        yield Live(agent, a, b, namespace)


@pytest.fixture(scope="module")
def browser(live: Live) -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def test_traffic_between_pods_appears_live_and_on_the_map(browser, live):
    ns = live.namespace
    port = 6000 + secrets.randbelow(1000)
    browser.get(f"{live.agent.url}/flows?namespace={ns}")
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live")
    assert t.udp(live.a, live.b, 4, 20, 200, port=port) == 20

    def row() -> str | None:
        for tr in browser.find_elements(By.CSS_SELECTOR, "#flows tbody tr"):
            text = " ".join(tr.text.split())
            if f"{live.b.ip(4)}:{port}" in text:
                return text
        return None

    text = wait_until(row, timeout=10)
    assert f"{ns}/client {live.a.ip(4)}:" in text and f"{ns}/server" in text
    assert "UDP" in text and "FORWARDED" in text
    assert console_errors(browser) == []
    screenshot(browser, "agent-flows")

    browser.get(f"{live.agent.url}/map?namespace={ns}")
    edge = f'#map a.edge[data-source="{ns}/client"][data-destination="{ns}/server"][data-verdict="FORWARDED"]'
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, edge), timeout=10)
    assert console_errors(browser) == []
    screenshot(browser, "agent-map")

    browser.get(f"{live.agent.url}/endpoints")
    pod_row = f'#endpoints tbody tr[data-pod="{ns}/client"]'

    def cells() -> list[str]:
        # One script reads the row at once: the page replaces its rows on every refresh.
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(c => c.innerText)", f"{pod_row} > *"
        )

    wait_until(cells)
    assert cells()[3] == live.a.ip(4) and cells()[7] == "attached"
    assert int(cells()[4]) >= 256, "the pod's policy identity"
    # The flow's record holds what its latest event (NEW, then a REPORT a second later) counted; the page
    # refreshes every few seconds.
    # (at least: IPv6 noise sent before the pod was quieted may count too)
    wait_until(lambda: int(cells()[8].split()[0]) >= 20, timeout=15)
    assert console_errors(browser) == []
    screenshot(browser, "agent-endpoints")


def test_a_denied_connection_shows_as_dropped_with_its_reason(browser, live):
    ns = live.namespace
    port = 7000 + secrets.randbelow(1000)
    browser.get(f"{live.agent.url}/flows?namespace={ns}&verdict=dropped")
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live")
    # a TCP connect the policy drops: the SYN never arrives, the client gives up
    target = (live.b.ip(4), port)
    connect = f"import socket; s = socket.socket(); s.settimeout(1); print(s.connect_ex({target!r}))"
    ns_exec(live.a.ns, "/usr/bin/python3", "-c", connect)
    assert wait_until(lambda: live.agent.get(f"/api/flows?verdict=dropped&to_port={port}")["flows"])

    def row():  # noqa: ANN202
        for tr in browser.find_elements(By.CSS_SELECTOR, "#flows tbody tr"):
            if f"{live.b.ip(4)}:{port}" in " ".join(tr.text.split()):
                return tr
        return None

    tr = wait_until(row, timeout=10)
    text = " ".join(tr.text.split())
    assert "TCP" in text and "DROPPED policy_denied" in text
    tr.click()
    panel = browser.find_element(By.ID, "detail")
    wait_until(panel.is_displayed)
    detail = detail_panel(browser)
    assert detail["Verdict"] == "DROPPED" and detail["Drop reason"] == "policy_denied"
    assert detail["Policy"] == "no policy allows ingress" and detail["Ingress policy"] == "no rule admits it"
    assert console_errors(browser) == []
    screenshot(browser, "agent-dropped")
