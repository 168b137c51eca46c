"""Screenshots of a running UI for the README: the Flows page and the Service map, in headless Chromium
(Debian's, as the browser tests drive it). Waits until the page shows real traffic with both verdicts.

    .venv/bin/python scripts/screenshots.py http://127.0.0.1:9465 --token <the demo's token> --out docs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

from tests.browser.harness import chromium, wait_until  # noqa: E402


def verdicts_in_table(driver: WebDriver) -> set[str]:
    return set(
        driver.execute_script(
            "return [...document.querySelectorAll('#flows tbody .badge')].map(b => b.textContent)"
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the UI, e.g. http://127.0.0.1:9465")
    ap.add_argument("--token", default=None, help="the agent's or relay's bearer token")
    ap.add_argument("--out", default=str(REPO / "docs"), help="directory for ui-flows.png and ui-map.png")
    ap.add_argument("--wait", type=float, default=120, help="seconds to wait for flows of both verdicts")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = args.url.rstrip("/")
    with chromium() as driver:
        driver.set_window_size(1680, 1000)  # room for the table beside the detail panel
        driver.get(f"{base}/flows")
        if args.token:
            driver.execute_script("sessionStorage.setItem('lumen-token', arguments[0])", args.token)
            driver.get(f"{base}/flows")
        wait_until(lambda: {"FORWARDED", "DROPPED"} <= verdicts_in_table(driver), timeout=args.wait)
        driver.find_element(By.ID, "pause").click()  # hold the rows still while the picture is taken
        # open a DROPPED flow's detail, in the middle of the table: the policy that dropped it shows
        dropped = driver.find_element(By.CSS_SELECTOR, "#flows tbody tr.r-dropped")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", dropped)
        dropped.click()
        wait_until(lambda: driver.find_element(By.ID, "detail").is_displayed())
        driver.execute_script(
            "document.querySelector('.table-wrap').scrollLeft = 0; window.scrollTo(0, 0);"
            "arguments[0].scrollIntoView({block: 'center'}); window.scrollTo(0, 0);",
            dropped,
        )
        driver.save_screenshot(str(out / "ui-flows.png"))
        driver.get(f"{base}/map")
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, '#map a.edge[data-verdict="DROPPED"]'),
            timeout=args.wait,
        )
        driver.save_screenshot(str(out / "ui-map.png"))
    print(f"screenshots: {out / 'ui-flows.png'}, {out / 'ui-map.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
