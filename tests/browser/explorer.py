"""Drives the explorer page (bin/explorer/) in headless Chromium for tests/explorer.rs.

Protocol over stdin/stdout (one line each, flushed):
  1. opens BASE/#node=NODE and waits (bounded) until NODE and every --expect node are drawn
     and the change feed is live, then prints `READY`;
  2. reads `GO <name>` from stdin (the test has just committed an edge to <name>), waits up to
     --within seconds for `[data-node="<name>"]`, saves a screenshot, prints `OK <ms>`;
  3. then, optionally, `GONE <name>` (the test removed that edge): waits up to --within seconds
     until <name> is no longer drawn, prints `OK <ms>`; end of input ends the script (exit 0).
  Any failure prints `FAIL <reason>` and exits 1.

Needs selenium (`.ci/run` installs it in target/venv) and Debian's chromium + chromium-driver.
"""

import argparse
import select
import sys
import time


def say(line):
    print(line, flush=True)


def fail(reason, driver=None):
    if driver is not None:
        reason += " | page: " + page_state(driver)
    say("FAIL " + reason.replace("\n", " "))
    if driver is not None:
        driver.quit()
    sys.exit(1)


def page_state(driver):
    """What the page shows, for failure messages: drawn nodes, message, live and status corners."""
    try:
        return driver.execute_script(
            """
            const t = (id) => (document.getElementById(id) || {}).textContent;
            const drawn = [...document.querySelectorAll('[data-node]')].map(e => e.dataset.node);
            return JSON.stringify({drawn: drawn.slice(0, 30), count: drawn.length,
                                   message: t('message'), live: t('live'), status: t('status')});
            """
        ) + " console: " + str([e.get("message") for e in driver.get_log("browser")][-5:])
    except Exception as e:  # the page state is only a hint
        return f"(unavailable: {e})"


def wait_until(deadline, cond, step=0.05):
    """Polls `cond` until it is truthy or `deadline` (time.monotonic) passes; returns its value."""
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def read_command():
    """The next command line's words, [] at end of input or after 120 s without one."""
    ready, _, _ = select.select([sys.stdin], [], [], 120)
    return sys.stdin.readline().split() if ready else []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="http://HOST:PORT of graphsync")
    ap.add_argument("--node", required=True, help="the centre node, e.g. User:1")
    ap.add_argument("--depth", type=int, default=1, choices=(1, 2))
    ap.add_argument("--expect", action="append", default=[], help="a node that must be drawn before READY")
    ap.add_argument("--token", help="API token, typed into the page's token field")
    ap.add_argument("--screenshot", required=True, help="PNG written after GO")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--ready-timeout", type=float, default=20.0)
    ap.add_argument("--within", type=float, default=2.0, help="seconds allowed after GO")
    ap.add_argument("--no-live", action="store_true", help="do not wait for the change feed before READY")
    args = ap.parse_args()

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError as e:
        fail(f"selenium is not installed for {sys.executable} ({e}): run .ci/run to install it")

    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1000,700", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=opts)
    except Exception as e:
        fail(f"cannot start {args.chromium} with {args.chromedriver} ({e}): run .ci/run to install them")

    def drawn(name):
        return driver.find_elements(By.CSS_SELECTOR, f'[data-node="{name}"]')

    url = f"{args.base}/#node={args.node}" + ("&depth=2" if args.depth == 2 else "")
    if args.token:
        # The page loads without a token; the token is typed in (kept in sessionStorage) and
        # sent with every API call, so open the page, type it, then follow the link.
        driver.get(f"{args.base}/")
        driver.find_element(By.ID, "token").send_keys(args.token)
        driver.find_element(By.ID, "node").send_keys(args.node)
        driver.find_element(By.CSS_SELECTOR, "#query button").click()
    driver.get(url)
    deadline = time.monotonic() + args.ready_timeout
    for name in [args.node] + args.expect:
        if not wait_until(deadline, lambda: drawn(name)):
            fail(f"{name} not drawn within {args.ready_timeout} s", driver)
    if not args.no_live:
        live = lambda: "on" in (driver.find_element(By.ID, "live").get_attribute("class") or "")
        if not wait_until(deadline, live):
            fail(f"change feed not live within {args.ready_timeout} s", driver)
    if not driver.find_element(By.ID, "status").text.strip():
        fail("the #status corner is empty", driver)
    say("READY")

    # The test commits its edge, then says GO (bounded: it may have died).
    line = read_command()
    if len(line) != 2 or line[0] != "GO":
        fail(f"expected `GO <node>` on stdin, got {line!r}", driver)
    target = line[1]
    t0 = time.monotonic()
    seen = wait_until(t0 + args.within, lambda: drawn(target), step=0.01)
    ms = (time.monotonic() - t0) * 1000
    if not seen:
        fail(f"{target} not drawn within {args.within} s of GO", driver)

    # A settled picture for the screenshot: wait (bounded) until positions stop moving.
    def positions():
        return driver.execute_script(
            "return [...document.querySelectorAll('[data-node]')].map(e => e.getAttribute('transform')).join(';')"
        )
    last = [None]

    def settled():
        p = positions()
        same = p == last[0]
        last[0] = p
        return same
    wait_until(time.monotonic() + 5, settled, step=0.3)
    driver.save_screenshot(args.screenshot)
    say(f"OK {ms:.0f}")

    line = read_command()
    if len(line) == 2 and line[0] == "GONE":
        t0 = time.monotonic()
        if not wait_until(t0 + args.within, lambda: not drawn(line[1]), step=0.01):
            fail(f"{line[1]} still drawn {args.within} s after GONE", driver)
        say(f"OK {(time.monotonic() - t0) * 1000:.0f}")
    elif line:
        fail(f"unexpected command {line!r}", driver)
    driver.quit()


if __name__ == "__main__":
    main()
