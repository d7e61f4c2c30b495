"""The console in a real browser: headless Debian Chromium driven by Selenium through
Debian's chromedriver. tests/api/console_browser.rs prepares a live service (a failed
event, a dead job, a user with a long ledger) and runs this script against it; the Rust
side then checks the database. Screenshots of each page go to --out.

Each step asserts what the page shows; any failure exits non-zero with the page source.
"""

import argparse
import pathlib
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--failed-event", required=True)
    p.add_argument("--masked", required=True, help="the failed event's email, masked")
    p.add_argument("--email", required=True, help="the failed event's email, as sent")
    p.add_argument("--dead-job", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--ledger-rows", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)

    def go(path: str) -> None:
        driver.get(a.url + path)

    def check(condition: bool, what: str) -> None:
        if not condition:
            print(f"FAIL: {what}\nat {driver.current_url}\n{driver.page_source}", file=sys.stderr)
            driver.quit()
            sys.exit(1)
        print(f"ok: {what}")

    def shot(name: str) -> None:
        driver.save_screenshot(str(out / f"{name}.png"))

    def navigating(action) -> None:
        """Run `action` (a click, a submit), then wait for the next page to load: a mark
        left on this page's window is gone once another document is there."""
        driver.execute_script("window.__leaving = true")
        action()
        WebDriverWait(driver, 15).until(lambda d: d.execute_script(
            "return window.__leaving === undefined && document.readyState === 'complete'"))

    try:
        # No page answers without the key: each sends the browser to the login form.
        for path in ("/admin/events", "/admin/outbox", "/admin/users?q=x", "/admin/health",
                     f"/admin/events/{a.failed_event}"):
            go(path)
            check(driver.current_url.endswith("/admin/login") and "Admin key" in driver.page_source,
                  f"{path} without a session shows the login form")
        shot("login")

        def log_in(key: str) -> None:
            go("/admin/login")
            field = driver.find_element(By.NAME, "key")
            field.clear()
            field.send_keys(key)
            navigating(field.submit)

        log_in("not-an-admin-key-at-all")
        check("That is not one of CLERK_SYNC_ADMIN_KEYS" in driver.page_source, "a wrong key is refused")
        log_in(a.key)
        check(driver.current_url.endswith("/admin/events"), "the right key opens the events page")

        # Events: the failed one, by filter; its payload with the email masked; Replay.
        go("/admin/events?status=failed")
        check(a.failed_event in driver.page_source and 'class="failed"' in driver.page_source,
              "the failed event is listed under status=failed")
        shot("events")
        navigating(driver.find_element(By.LINK_TEXT, a.failed_event).click)
        source = driver.page_source
        check(a.masked in source and a.email not in source, "the stored payload shows the email masked")
        check("not-null" in source or "NOT NULL" in source or "null value" in source,
              "the event shows why it failed")
        shot("event-failed")
        navigating(driver.find_element(By.ID, "replay").click)
        check("Replayed: processed" in driver.page_source, "Replay processes it")
        check('class="processed"' in driver.page_source, "the event is now processed")
        shot("event-replayed")

        # Outbox: the dead job, Retry, and the worker delivers it to the (fake) Clerk.
        go("/admin/outbox?status=dead")
        row = driver.find_element(By.ID, f"job-{a.dead_job}")
        check("dead" in row.text, "the dead job is listed with its error")
        shot("outbox-dead")
        navigating(row.find_element(By.TAG_NAME, "button").click)
        check("queued again" in driver.page_source, "Retry queues it again")
        delivered = False
        for _ in range(100):
            go("/admin/outbox?status=done")
            if f'id="job-{a.dead_job}"' in driver.page_source:
                delivered = True
                break
            time.sleep(0.2)
        check(delivered, "the retried job is delivered: done")
        shot("outbox-done")

        # Users: look up, then page through the whole ledger once.
        go("/admin/users")
        field = driver.find_element(By.NAME, "q")
        field.send_keys(a.user)
        navigating(field.submit)
        check(driver.find_element(By.ID, "clerk-id").text == a.user, "the user is found by Clerk id")
        shot("user")
        seen = []
        pages = 0
        while True:
            pages += 1
            rows = driver.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")
            seen += [r.text for r in rows]
            older = driver.find_elements(By.ID, "older")
            if not older:
                break
            navigating(older[0].click)
        check(len(seen) == a.ledger_rows and len(set(seen)) == len(seen),
              f"paging shows each of the {a.ledger_rows} ledger rows once ({len(seen)} over {pages} pages)")
        check(pages >= 3, "the ledger spans several pages")

        # Health: readiness, the chart, the diagnose report.
        go("/admin/health")
        source = driver.page_source
        check('<span class="ok">ok</span>' in source, "readiness is ok")
        check(len(driver.find_elements(By.CSS_SELECTOR, "svg rect")) > 1, "the signup chart is drawn")
        check("steps passed" in driver.find_element(By.ID, "diagnose").text or "passed" in source,
              "the diagnose report is shown")
        shot("health")

        # A forged form (no CSRF token), posted from this very session, is refused.
        go("/admin/events")
        navigating(lambda: driver.execute_script(
            "const f = document.createElement('form'); f.method = 'post';"
            "f.action = '/admin/outbox/' + arguments[0] + '/retry'; document.body.appendChild(f); f.submit();",
            a.dead_job,
        ))
        check("not from this session" in driver.page_source, "a form without the CSRF token is refused (403)")
        shot("forged")

        # Logging out ends the session.
        go("/admin/events")
        navigating(driver.find_element(By.XPATH, "//header//button").click)
        go("/admin/events")
        check(driver.current_url.endswith("/admin/login"), "after logging out, pages need the key again")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
