"""Headless Chromium (Debian's, through its chromedriver) driven by selenium, and the agent's app served by
uvicorn on 127.0.0.1 over a real FlowStore that a test fills. The network is closed: the browser gets a
fresh profile and every background fetch switched off."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from exporter import ui
from exporter.api import create_app

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,900",
]


@contextmanager
def chromium() -> Iterator[WebDriver]:
    with tempfile.TemporaryDirectory(prefix="lumen-chromium-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: selenium-manager would try to download one.
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def detail_panel(driver: WebDriver) -> dict[str, str]:
    """The open flow detail panel as {term: value}."""
    from selenium.webdriver.common.by import By

    panel = driver.find_element(By.ID, "detail")
    return dict(
        zip(
            [e.text for e in panel.find_elements(By.TAG_NAME, "dt")],
            [e.text for e in panel.find_elements(By.TAG_NAME, "dd")],
            strict=True,
        )
    )


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {cond}")
        time.sleep(interval)


class Server:
    """create_app(view, ui=...) under uvicorn in a thread, on a free loopback port."""

    def __init__(self, view: Any, token: str | None = None) -> None:
        app = create_app(view, token=token, ui=ui.hook(token))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        # Open SSE streams would hold a graceful shutdown; nothing is left to flush.
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(timeout=10)
