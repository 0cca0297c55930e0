"""The reader's checks: a built site served on localhost, opened in headless Chromium through Playwright.

    with serve_directory("site/_site", prefix="/REPO") as base, Browser() as browser:
        report = browser.check(f"{base}/2026/11/28/implementing-diffusion-models.html")
        assert report.ok, report.problems()

or, for one page and nothing else, `check_page(url_or_built_html)` (starts and stops its own browser).

Playwright drives Debian's Chromium (`/usr/bin/chromium`, from scripts/install_system_deps.sh) through
`executable_path`: its own browser download cannot work offline and is never used. Why Playwright and not
Selenium with chromedriver: BENCHMARKS.md (bench/bench_browser.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Iterator

from diffusion_post.preview import serve_site

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# No background traffic: this machine's network is closed, and a reader's page must not need any.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
)
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def chromium_path() -> str | None:
    """Debian's Chromium (or another Chromium on PATH); None when there is none."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


# --------------------------------------------------------------------------------------------
# A localhost server for a built site, optionally under a base URL
# --------------------------------------------------------------------------------------------

def serve_directory(root: str | os.PathLike, prefix: str = "", host: str = "127.0.0.1") -> contextlib.AbstractContextManager[str]:
    """Serve `root` (a built `_site`) on localhost in a thread, under `prefix` (the site's baseurl, e.g. "/REPO").

    A context manager that yields the site's URL `http://host:port{prefix}`; anything outside the prefix is a 404, as
    on GitHub Pages. The server is the preview's (diffusion_post.preview.serve_site), without its reload script.
    """
    return serve_site(root, prefix, host=host)


# --------------------------------------------------------------------------------------------
# What a reader sees
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MathSpan:
    """One equation: its TeX source (without delimiters, stripped) and whether it is display math."""

    tex: str
    display: bool
    line: int = 0  # 1-based line in the markdown; 0 when it comes from the browser

    def key(self) -> str:
        """Whitespace-normalized form used to compare the markdown with what MathJax typeset."""
        return ("display " if self.display else "inline ") + " ".join(self.tex.split())


@dataclasses.dataclass
class PageReport:
    """What a reader sees on one page, after the load event, MathJax and the web fonts."""

    url: str
    title: str = ""
    images: int = 0                 # <img> elements (the interactive figures' frames included)
    images_loaded: int = 0          # complete && naturalWidth > 0
    broken_images: list[str] = dataclasses.field(default_factory=list)   # their src attributes
    image_urls: list[str] = dataclasses.field(default_factory=list)      # every <img>'s absolute URL
    math: int = 0                   # mjx-container elements
    math_display: int = 0           # mjx-container[display=true]
    math_spans: list[MathSpan] = dataclasses.field(default_factory=list)  # TeX MathJax typeset
    math_errors: list[str] = dataclasses.field(default_factory=list)      # mjx-merror messages
    wide_math: list[str] = dataclasses.field(default_factory=list)  # TeX of equations wider than the window or their box
    mathjax_expected: bool = False  # the page has a script#MathJax-script
    mathjax_version: str | None = None  # set when MathJax started
    stylesheets: int = 0            # style sheets the page applied (link rel=stylesheet that loaded)
    sliders: int = 0                # input[type=range] of the interactive figures
    toggles: int = 0                # the anagrams' view buttons
    page_width: int = 0             # document scroll width, CSS px
    viewport_width: int = 0         # window.innerWidth
    wide_elements: list[str] = dataclasses.field(default_factory=list)  # wider than the viewport
    js_errors: list[str] = dataclasses.field(default_factory=list)      # exceptions and console errors
    requests: int = 0               # requests the page made (all of them, local ones included)
    failed_requests: list[str] = dataclasses.field(default_factory=list)
    external_requests: list[str] = dataclasses.field(default_factory=list)  # not localhost

    @property
    def math_inline(self) -> int:
        return self.math - self.math_display

    @property
    def overflows(self) -> bool:
        return self.page_width > self.viewport_width

    def problems(self) -> list[str]:
        """Everything a reader would notice, one line each; [] for a clean page."""
        out = [f"image not loaded: {src}" for src in self.broken_images]
        if self.mathjax_expected and self.mathjax_version is None:
            out.append("MathJax did not start")
        out += [f"TeX error: {e}" for e in self.math_errors]
        out += [f"equation wider than the column: {tex[:80]}" for tex in self.wide_math]
        out += [f"JS error: {e}" for e in self.js_errors]
        out += [f"failed request: {r}" for r in self.failed_requests]
        out += [f"off-site request: {r}" for r in self.external_requests]
        if self.overflows:
            out.append(f"page {self.page_width} px wide in a {self.viewport_width} px window: {self.wide_elements[:5]}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["math_spans"] = [{"tex": s.tex, "display": s.display} for s in self.math_spans]
        data["math_inline"] = self.math_inline
        data["ok"] = self.ok
        return data


# Runs in the page after the load event; resolves once MathJax, images and web fonts are done.
PAGE_PROBE = r"""
async () => {
  const mj = window.MathJax;
  const started = !!(mj && mj.startup && mj.startup.promise);
  if (started) { await mj.startup.promise; }
  const settle = () => Promise.all(Array.from(document.images).filter(i => !i.complete).map(i => new Promise(done => {
    i.addEventListener('load', done, {once: true});
    i.addEventListener('error', done, {once: true});
  })));
  await settle();
  if (document.fonts) { await document.fonts.ready; }
  await settle();
  const imgs = Array.from(document.images);
  const good = i => i.complete && i.naturalWidth > 0;
  const containers = Array.from(document.querySelectorAll('mjx-container'));
  const items = started ? mj.startup.document.getMathItemsWithin(document.body) : [];
  const width = window.innerWidth;
  // An equation that does not fit: wider than the window, or than its own box (a display equation would scroll).
  const tooWide = c => c.getBoundingClientRect().width > width + 0.5 || (c.clientWidth > 0 && c.scrollWidth > c.clientWidth + 1);
  const describe = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
    (e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\s+/).join('.') : '');
  // Wider than the window, and not inside a box that scrolls or clips it (a long equation, a wide table).
  const contained = e => {
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') { return true; }
    }
    return false;
  };
  const wide = Array.from(document.body.querySelectorAll('*')).filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.right > width + 0.5 && !contained(e);
  }).map(e => describe(e) + ' (' + Math.round(e.getBoundingClientRect().right) + ' px)');
  return {
    title: document.title,
    images: imgs.length,
    images_loaded: imgs.filter(good).length,
    broken_images: imgs.filter(i => !good(i)).map(i => i.getAttribute('src')),
    image_urls: imgs.map(i => i.currentSrc || i.src),
    math: containers.length,
    math_display: containers.filter(c => c.getAttribute('display') === 'true').length,
    math_spans: items.map(m => ({tex: String(m.math), display: !!m.display})),
    math_errors: Array.from(document.querySelectorAll('mjx-merror')).map(
      e => e.getAttribute('data-mjx-error') || e.textContent),
    wide_math: items.filter(m => m.typesetRoot && tooWide(m.typesetRoot)).map(m => String(m.math).trim()),
    mathjax_expected: !!document.getElementById('MathJax-script'),
    mathjax_version: started ? String(mj.version) : null,
    stylesheets: Array.from(document.styleSheets).filter(s => { try { return s.cssRules.length > 0; } catch (e) { return false; } }).length,
    sliders: document.querySelectorAll('.interactive input[type=range]').length,
    toggles: document.querySelectorAll('.interactive button').length,
    page_width: document.documentElement.scrollWidth,
    viewport_width: width,
    wide_elements: wide,
  };
}
"""


class Browser:
    """One headless Chromium for many pages: `with Browser() as b: b.check(url)`; `b.open(url)` for a live page."""

    def __init__(self, executable: str | None = None, *, width: int = 1000, height: int = 800):
        self.executable = executable or chromium_path()
        if self.executable is None:
            raise RuntimeError("chromium not found on PATH: run scripts/install_system_deps.sh (apt-get install chromium)")
        self.width, self.height = width, height

    # Playwright's sync API runs one driver per thread: browsers opened while another is open share it.
    _driver = None
    _users = 0

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        if Browser._driver is None:
            Browser._driver = sync_playwright().start()
        Browser._users += 1
        try:
            self._browser = Browser._driver.chromium.launch(
                executable_path=self.executable, headless=True, args=list(CHROMIUM_ARGS))
        except Exception:
            self._release()
            raise
        self.version = self._browser.version
        return self

    def __exit__(self, *exc_info) -> None:
        with contextlib.suppress(Exception):
            self._browser.close()
        self._release()

    @staticmethod
    def _release() -> None:
        Browser._users -= 1
        if Browser._users == 0:
            Browser._driver.stop()
            Browser._driver = None

    @contextlib.contextmanager
    def open(self, url: str, *, width: int | None = None, height: int | None = None, timeout: float = 30,
             javascript: bool = True) -> Iterator[tuple["object", PageReport]]:
        """A fresh page (own context: no cache, no cookies) at `url`, checked; yields (Playwright page, report).
        With javascript=False the page's scripts do not run (the checks' own evaluations still do).

        The report's console errors, exceptions and requests keep growing while the page is used.
        """
        context = self._browser.new_context(viewport={"width": width or self.width, "height": height or self.height},
                                            java_script_enabled=javascript)
        try:
            page = context.new_page()
            page.set_default_timeout(timeout * 1000)
            report = PageReport(url=url)
            local = LOCAL_HOSTS | {urllib.parse.urlsplit(url).hostname}

            def on_request(request):
                report.requests += 1
                parts = urllib.parse.urlsplit(request.url)
                if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in local:
                    report.external_requests.append(request.url)

            def on_response(response):
                if response.status >= 400:
                    report.failed_requests.append(f"{response.url} ({response.status})")

            def on_console(message):
                if message.type in ("error", "assert"):
                    report.js_errors.append(f"console.{message.type}: {message.text}")

            page.on("request", on_request)
            page.on("response", on_response)
            page.on("requestfailed", lambda r: report.failed_requests.append(f"{r.url} ({r.failure})"))
            page.on("console", on_console)
            page.on("pageerror", lambda error: report.js_errors.append(str(error).splitlines()[0] if str(error) else "exception"))
            page.goto(url, wait_until="load")
            values = page.evaluate(PAGE_PROBE)
            values["math_spans"] = [MathSpan(s["tex"].strip(), s["display"]) for s in values["math_spans"]]
            for key, value in values.items():
                setattr(report, key, value)
            # 404s of images also appear as console errors ("Failed to load resource"): keep them as failed requests.
            report.js_errors[:] = [e for e in report.js_errors if "Failed to load resource" not in e]
            yield page, report
        finally:
            context.close()

    def check(self, url: str, *, width: int | None = None, screenshot: str | os.PathLike | None = None,
              timeout: float = 30) -> PageReport:
        """Load `url`, wait for MathJax, images and fonts; report what a reader sees (a full-page PNG on request)."""
        with self.open(url, width=width, timeout=timeout) as (page, report):
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            page.evaluate("() => 0")  # let late console and network events arrive
            return report


def page_url(base: str, site_root: str | os.PathLike, built_html: str | os.PathLike) -> str:
    """The URL of a built HTML file of `site_root` when the site is served at `base`."""
    rel = Path(built_html).resolve().relative_to(Path(site_root).resolve()).as_posix()
    return f"{base}/{urllib.parse.quote(rel)}"


def check_page(url_or_built_html: str | os.PathLike, *, site_root: str | os.PathLike | None = None,
               prefix: str = "", width: int | None = None, screenshot: str | os.PathLike | None = None) -> PageReport:
    """Check one page in its own browser: an http(s) URL, or a built HTML file served from `site_root`
    (default: the nearest enclosing `_site` folder) under `prefix` for the check."""
    target = str(url_or_built_html)
    if re.match(r"^https?://", target):
        with Browser() as browser:
            return browser.check(target, width=width, screenshot=screenshot)
    page = Path(target).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"no such page: {page}")
    if site_root is None:
        site_root = next((p for p in page.parents if p.name == "_site"), page.parent)
    with serve_directory(site_root, prefix) as base, Browser() as browser:
        return browser.check(page_url(base, site_root, page), width=width, screenshot=screenshot)
