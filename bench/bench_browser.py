"""Playwright vs Selenium for the reader's checks, side by side in one run, on the built post.

    python bench/bench_browser.py [--site site/_site] [--runs 3]

Each run, for each library in turn (alternating, so both see the same machine load): start Debian's Chromium
headless; twice, load the post served on localhost, wait for the load event, run the page probe of
tests/browser.py (MathJax typeset, every image decoded, fonts ready) and read the console errors and the requests;
close. Prints the seconds of each phase, the medians of the totals and of a check in a running browser (what a
test session pays per page), their ratios Selenium / Playwright, and what each library saw (they must agree).

Selenium is not a dependency of the project: `pip install selenium` and `apt-get install chromium-driver` to run
this comparison. Playwright is launched on /usr/bin/chromium through executable_path (its own browser download
cannot work offline).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import CHROMIUM_ARGS, PAGE_PROBE, Browser, chromium_path, page_url, serve_directory  # noqa: E402


def with_playwright(url: str) -> tuple[dict, dict]:
    times = {}
    start = time.perf_counter()
    with Browser() as browser:
        times["launch"] = time.perf_counter() - start
        for phase in ("check", "check again"):
            start = time.perf_counter()
            report = browser.check(url)
            times[phase] = time.perf_counter() - start
        start = time.perf_counter()
    times["close"] = time.perf_counter() - start
    return times, {"images": report.images_loaded, "math": report.math, "js_errors": len(report.js_errors),
                   "requests_seen": report.requests, "sliders": report.sliders, "toggles": report.toggles}


def with_selenium(url: str) -> tuple[dict, dict]:
    """The same check with Selenium: console errors from the browser log; requests (failed, off-site) only from
    Chromium's performance log, i.e. DevTools protocol events parsed by hand, as tests/browser.py no longer does."""
    import json

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    times = {}
    start = time.perf_counter()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for arg in ("--headless=new", *CHROMIUM_ARGS, "--window-size=1000,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        times["launch"] = time.perf_counter() - start
        # No HTTP cache, so that the second check loads every file again, as Playwright's fresh context does.
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        for phase in ("check", "check again"):
            start = time.perf_counter()
            driver.set_script_timeout(30)
            driver.get(url)  # returns after the load event
            values = driver.execute_async_script(
                "const done = arguments[arguments.length - 1]; (" + PAGE_PROBE + ")().then(done);")
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
            requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
            times[phase] = time.perf_counter() - start
        start = time.perf_counter()
    finally:
        driver.quit()
    times["close"] = time.perf_counter() - start
    return times, {"images": values["images_loaded"], "math": values["math"], "js_errors": len(errors),
                   "requests_seen": len(requests), "sliders": values["sliders"], "toggles": values["toggles"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default=str(ROOT / "site" / "_site"), help="a built _site with the post")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    site = Path(args.site)
    posts = sorted(site.rglob("implementing-diffusion-models.html"))
    if not posts:
        sys.exit(f"error: no built post under {site}: run `snakemake --cores 1` first")
    libraries = {"playwright": with_playwright, "selenium": with_selenium}
    totals = {name: [] for name in libraries}
    warm = {name: [] for name in libraries}
    with serve_directory(site) as base:
        url = page_url(base, site, posts[0])
        for run in range(args.runs):
            for name, check in libraries.items():
                times, seen = check(url)
                totals[name].append(sum(times.values()))
                warm[name].append(times["check again"])
                phases = ", ".join(f"{k} {v:.2f}" for k, v in times.items())
                print(f"run {run + 1} {name:10s} total {totals[name][-1]:5.2f} s ({phases}); saw {seen}")
    for label, values in (("launch + 2 checks + close", totals), ("check in a running browser", warm)):
        medians = {name: statistics.median(v) for name, v in values.items()}
        print(f"{label}: median " + ", ".join(f"{n} {m:.2f} s" for n, m in medians.items())
              + f" over {args.runs} runs; ratio selenium / playwright {medians['selenium'] / medians['playwright']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
