"""The Jekyll site around the post: offline MathJax, `jekyll build`, and a reader's checks in Chromium.

Three jobs, each usable alone:

- `install_mathjax(site_dir)` copies the few MathJax 3 files that `tex-chtml.js` needs into
  `site/assets/mathjax/` (from `npm pack mathjax@3`, cached), so the page needs no CDN.
- `build_site(site_dir)` runs Debian's `jekyll build` (no Gemfile, no bundler).
- `check_page(url_or_built_html)` opens the page in headless Chromium, waits for MathJax, and
  reports images (loaded or not), typeset equations (count and TeX source), TeX errors, JS errors
  and failed requests. Chromium is driven over the DevTools protocol on a pipe
  (`--remote-debugging-pipe`): no port, no websocket library, no chromedriver.

The math helpers (`extract_math`, `count_equations`, `protect_inline_math`, `lint_math`) read the
post's markdown the way kramdown (GFM input, math engine mathjax) and then MathJax will:

- `$$...$$` alone in its block (blank lines around) is display math (kramdown writes `\\[...\\]`);
- `$$...$$` inside a paragraph is inline math (kramdown writes `\\(...\\)`), its TeX kept verbatim;
- single `$...$` is NOT kramdown syntax: it reaches MathJax only after markdown processing, which
  eats backslash escapes (`\\{` -> `{`, `\\\\` -> `\\`) and turns `_..._` / `*...*` into emphasis;
- a `|` on the first line of a paragraph makes the paragraph a table, even inside `$$...$$`.

So the post should write inline math as `$$...$$` with `\\vert` for `|`:
`protect_inline_math` does exactly that. Liquid is switched off for posts in `_config.yml`
(`render_with_liquid: false`), so `{{` and `{%` in TeX are safe and no `{% raw %}` is needed.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import dataclasses
import difflib
import fcntl
import functools
import http.server
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

__all__ = [
    "SiteToolError",
    "MathSpan",
    "EquationCount",
    "PageReport",
    "install_mathjax",
    "build_site",
    "built_post_path",
    "serve_directory",
    "Browser",
    "check_page",
    "extract_math",
    "count_equations",
    "protect_inline_math",
    "lint_math",
    "math_mismatches",
    "main",
]


class SiteToolError(RuntimeError):
    """A tool the site needs (npm, jekyll, chromium) is missing or failed; the message is one line."""


def _require_tool(names: Sequence[str], hint: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise SiteToolError(f"{names[0]} not found on PATH: {hint}")


_APT_HINT = "run scripts/install_system_deps.sh (apt-get install jekyll chromium)"


# --------------------------------------------------------------------------------------------
# MathJax, served from the site itself
# --------------------------------------------------------------------------------------------

# Files of the npm package (under package/es5/ unless noted) that tex-chtml needs, and where they
# go under assets/mathjax/. MathJax finds fonts and extensions relative to its script's URL.
_MATHJAX_FILES = {
    "es5/tex-chtml.js": "tex-chtml.js",  # TeX input + CommonHTML output + menu, one file
    "es5/output/chtml/fonts/woff-v2/": "output/chtml/fonts/woff-v2/",  # loaded by CSS at run time
    "es5/input/tex/extensions/": "input/tex/extensions/",  # autoloaded (\boldsymbol, \cancel, ...)
    "LICENSE": "LICENSE",
}
_MATHJAX_STAMP = ".installed.json"


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("DIFFUSION_POST_CACHE"):
        return Path(os.environ["DIFFUSION_POST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffusion_post"


def _version_key(path: Path) -> tuple:
    numbers = re.findall(r"\d+", path.name)
    return tuple(int(n) for n in numbers)


def _mathjax_tarball(version: str, cache_dir: Path) -> Path:
    """The cached `npm pack mathjax@<version>` tarball, fetched with npm when not cached yet."""
    npm_dir = cache_dir / "npm"
    pattern = f"mathjax-{version}.tgz" if version.count(".") == 2 else f"mathjax-{version}.*.tgz"
    cached = sorted(npm_dir.glob(pattern), key=_version_key)
    if cached:
        return cached[-1]
    npm = _require_tool(["npm"], "install Node.js/npm (scripts/install_system_deps.sh) to fetch MathJax")
    npm_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [npm, "pack", f"mathjax@{version}", "--silent", "--pack-destination", str(npm_dir)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SiteToolError(f"npm pack mathjax@{version} failed: {last}")
    name = proc.stdout.strip().splitlines()[-1].strip()
    tarball = npm_dir / name
    if not tarball.is_file():
        raise SiteToolError(f"npm pack mathjax@{version} did not write {tarball}")
    return tarball


def install_mathjax(
    site_dir: str | os.PathLike,
    *,
    version: str = "3",
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Copy MathJax `version`'s tex-chtml bundle into `site_dir/assets/mathjax/`; returns that folder.

    Idempotent: returns at once when the same version spec is installed. The npm tarball is cached
    under `cache_dir` (default `$DIFFUSION_POST_CACHE` or `~/.cache/diffusion_post`), so npm
    (and the registry) is needed only the first time. About 2 MB on disk.
    """
    dest = Path(site_dir) / "assets" / "mathjax"
    stamp = dest / _MATHJAX_STAMP
    if not force and stamp.is_file():
        with contextlib.suppress(ValueError, OSError):
            info = json.loads(stamp.read_text())
            if info.get("spec") == version and all((dest / p).exists() for p in _MATHJAX_FILES.values()):
                return dest
    tarball = _mathjax_tarball(version, _cache_dir(cache_dir))

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mathjax-", dir=dest.parent))
    try:
        resolved = None
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.startswith("package/"):
                    continue
                name = member.name[len("package/"):]
                if name == "package.json":
                    resolved = json.load(tar.extractfile(member)).get("version")
                for src, dst in _MATHJAX_FILES.items():
                    if name == src or (src.endswith("/") and name.startswith(src)):
                        target = staging / (dst + name[len(src):])
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(tar.extractfile(member).read())
        missing = [p for p in _MATHJAX_FILES.values() if not (staging / p).exists()]
        if missing:
            raise SiteToolError(f"{tarball.name} lacks {', '.join(missing)}: not a MathJax 3 package?")
        (staging / _MATHJAX_STAMP).write_text(
            json.dumps({"spec": version, "version": resolved, "tarball": tarball.name}) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("MathJax %s installed in %s", resolved, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Jekyll
# --------------------------------------------------------------------------------------------

def build_site(
    site_dir: str | os.PathLike,
    dest: str | os.PathLike | None = None,
    *,
    timeout: float = 600,
) -> Path:
    """Run `jekyll build` on `site_dir` into `dest` (default `site_dir/_site`); returns `dest`.

    Uses `--strict-front-matter`, so a post with broken YAML front matter fails the build instead
    of being copied raw. Jekyll's warnings are logged; a failure raises SiteToolError with the
    last line of Jekyll's output.
    """
    jekyll = _require_tool(["jekyll"], _APT_HINT)
    site = Path(site_dir).resolve()
    out = Path(dest).resolve() if dest is not None else site / "_site"
    env = dict(os.environ, JEKYLL_NO_BUNDLER_REQUIRE="true", JEKYLL_ENV=os.environ.get("JEKYLL_ENV", "production"))
    proc = subprocess.run(
        [jekyll, "build", "--source", str(site), "--destination", str(out), "--strict-front-matter"],
        cwd=site, env=env, capture_output=True, text=True, timeout=timeout,
    )
    output = _strip_ansi(proc.stdout + proc.stderr)
    for line in output.splitlines():
        if "Warning:" in line or "Deprecation:" in line:
            log.warning("jekyll: %s", line.strip())
    if proc.returncode != 0:
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "Exception" in ln] or lines or ["(no output)"]
        raise SiteToolError(f"jekyll build failed (exit {proc.returncode}): {errors[0]}")
    return out


def publish_figures(files: Sequence[str | os.PathLike], dest: str | os.PathLike) -> None:
    """Make `dest` hold exactly `files` (the post's figures), copying only those that changed."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = {Path(f).name for f in files}
    for stale in dest.iterdir():
        if stale.name not in names:
            stale.unlink()
    for f in map(Path, files):
        target = dest / f.name
        if not target.exists() or target.read_bytes() != f.read_bytes():
            shutil.copyfile(f, target)


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def built_post_path(dest: str | os.PathLike, post: str | os.PathLike) -> Path:
    """The HTML file Jekyll made in `dest` from the post file `post` (e.g. `2024-01-01-slug.md`)."""
    slug = re.sub(r"^\d{4}-\d{2}-\d{2}-", "", Path(post).stem)
    dest = Path(dest)
    found = sorted(dest.rglob(f"{slug}.html")) + sorted(dest.rglob(f"{slug}/index.html"))
    if not found:
        raise FileNotFoundError(f"no built page for post {Path(post).name} under {dest}")
    return found[0]


# --------------------------------------------------------------------------------------------
# A localhost server for the built site
# --------------------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve_directory(root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `root` (a built `_site`) over HTTP in a thread; yields the base URL `http://host:port`.

    The site's `baseurl` must be empty (as in site/_config.yml): pages are served from `/`.
    """
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol on a pipe
# --------------------------------------------------------------------------------------------

_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


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
    """What a reader would see on one page (all counts after MathJax finished typesetting)."""

    url: str
    title: str = ""
    images: int = 0                 # <img> elements
    images_loaded: int = 0          # complete && naturalWidth > 0
    broken_images: list[str] = dataclasses.field(default_factory=list)
    math: int = 0                   # mjx-container elements
    math_display: int = 0           # mjx-container[display=true]
    math_spans: list[MathSpan] = dataclasses.field(default_factory=list)  # TeX MathJax typeset
    math_errors: list[str] = dataclasses.field(default_factory=list)      # mjx-merror messages
    mathjax_expected: bool = False  # the page has a script#MathJax-script
    mathjax_version: str | None = None  # set when MathJax started
    js_errors: list[str] = dataclasses.field(default_factory=list)
    failed_requests: list[str] = dataclasses.field(default_factory=list)
    external_requests: list[str] = dataclasses.field(default_factory=list)  # not localhost

    @property
    def math_inline(self) -> int:
        return self.math - self.math_display

    @property
    def ok(self) -> bool:
        """All images loaded, MathJax ran if the page asks for it, no errors of any kind."""
        return (
            self.images_loaded == self.images
            and (self.mathjax_version is not None or not self.mathjax_expected)
            and not (self.math_errors or self.js_errors or self.failed_requests or self.external_requests)
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["math_spans"] = [{"tex": s.tex, "display": s.display} for s in self.math_spans]
        data["math_inline"] = self.math_inline
        data["ok"] = self.ok
        return data


# Runs in the page after the load event; resolves once MathJax and the web fonts are done.
_PAGE_PROBE = r"""
(async () => {
  const mj = window.MathJax;
  const started = !!(mj && mj.startup && mj.startup.promise);
  if (started) { await mj.startup.promise; }
  const imgs = Array.from(document.images);
  await Promise.all(imgs.filter(i => !i.complete).map(i => new Promise(done => {
    i.addEventListener('load', done, {once: true});
    i.addEventListener('error', done, {once: true});
  })));
  if (document.fonts) { await document.fonts.ready; }
  const good = i => i.complete && i.naturalWidth > 0;
  const containers = Array.from(document.querySelectorAll('mjx-container'));
  const items = started ? mj.startup.document.getMathItemsWithin(document.body) : [];
  return {
    title: document.title,
    images: imgs.length,
    images_loaded: imgs.filter(good).length,
    broken_images: imgs.filter(i => !good(i)).map(i => i.getAttribute('src')),
    math: containers.length,
    math_display: containers.filter(c => c.getAttribute('display') === 'true').length,
    math_spans: items.map(m => ({tex: String(m.math), display: !!m.display})),
    math_errors: Array.from(document.querySelectorAll('mjx-merror')).map(
      e => e.getAttribute('data-mjx-error') || e.textContent),
    mathjax_expected: !!document.getElementById('MathJax-script'),
    mathjax_version: started ? String(mj.version) : null,
  };
})()
"""


class _Pipe:
    """DevTools protocol over Chromium's --remote-debugging-pipe: JSON messages ending in NUL."""

    def __init__(self, to_browser: int, from_browser: int):
        self.to_browser, self.from_browser = to_browser, from_browser
        self.buffer = b""
        self.events: list[dict] = []
        self.next_id = 0

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise SiteToolError("Chromium closed the DevTools pipe (it crashed or exited)")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self.to_browser, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise SiteToolError(f"DevTools {method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str | None, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            message = self._read_message(deadline)
            if "method" in message:
                self.events.append(message)


class Browser:
    """One headless Chromium for several `check` calls: `with Browser() as b: b.check(url)`."""

    def __init__(self, executable: str | None = None, *, width: int = 1000, height: int = 800,
                 extra_flags: Sequence[str] = ()):
        self.executable = executable or _require_tool(
            ["chromium", "chromium-browser", "google-chrome"], _APT_HINT)
        self.width, self.height = width, height
        self.extra_flags = list(extra_flags)
        self.pid: int | None = None

    def __enter__(self) -> "Browser":
        self.profile = tempfile.mkdtemp(prefix="diffusion-post-chromium-")
        self.log_path = os.path.join(self.profile, "chromium.log")
        args = [*_CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}", *self.extra_flags, "about:blank"]
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        res_r, res_w = os.pipe()  # Chromium writes replies on fd 4, we read them
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        # Lift the child's ends above fd 4 so the dup2 calls below cannot clobber each other.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, res_w, log_fd)]
        self.pipe = _Pipe(cmd_w, res_r)
        try:
            self.pid = os.posix_spawn(
                self.executable, [self.executable, *args], os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, high[2], 1),
                    (os.POSIX_SPAWN_DUP2, high[2], 2),
                    (os.POSIX_SPAWN_DUP2, high[0], 3),
                    (os.POSIX_SPAWN_DUP2, high[1], 4),
                ],
                setsid=True,  # its own process group: closing kills renderers too
            )
        except OSError as exc:
            self.__exit__(None, None, None)
            raise SiteToolError(f"cannot start {self.executable}: {exc}") from exc
        finally:
            for fd in (cmd_r, res_w, log_fd, *high):
                os.close(fd)
        try:
            self.version = self.pipe.call("Browser.getVersion", timeout=30).get("product", "")
        except Exception as exc:
            tail = self._log_tail()
            self.__exit__(None, None, None)
            raise SiteToolError(f"Chromium did not start ({exc}); log: {tail}") from exc
        return self

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in Path(self.log_path).read_text(errors="replace").splitlines() if ln.strip()]
            return " | ".join(lines[-3:]) or "(empty)"
        return "(none)"

    def __exit__(self, *exc_info) -> None:
        if self.pid is not None:
            with contextlib.suppress(Exception):
                self.pipe.call("Browser.close", timeout=5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group we started
            self.pid = None
        pipe = getattr(self, "pipe", None)
        for fd in (pipe.to_browser, pipe.from_browser) if pipe else ():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipe = None
        if getattr(self, "profile", None):
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    def check(self, url: str, *, timeout: float = 30, screenshot: str | os.PathLike | None = None) -> PageReport:
        """Load `url`, wait for the load event, MathJax and fonts; report what a reader sees."""
        pipe = self.pipe
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.events = [e for e in pipe.events if e.get("sessionId") != session]
            nav = pipe.call("Page.navigate", {"url": url}, session=session, timeout=timeout)
            if nav.get("errorText"):
                raise SiteToolError(f"Chromium could not open {url}: {nav['errorText']}")
            pipe.wait_event("Page.loadEventFired", session, timeout)
            probe = pipe.call("Runtime.evaluate", {
                "expression": _PAGE_PROBE, "awaitPromise": True, "returnByValue": True,
            }, session=session, timeout=timeout)
            if "exceptionDetails" in probe:
                raise SiteToolError(f"page probe failed on {url}: {_exception_text(probe['exceptionDetails'])}")
            if screenshot is not None:
                size = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                shot = pipe.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
                }, session=session, timeout=timeout)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            # Let late console/network events arrive, then read them all.
            pipe.call("Runtime.evaluate", {"expression": "1"}, session=session)
            events = [e for e in pipe.events if e.get("sessionId") == session]
            pipe.events = [e for e in pipe.events if e.get("sessionId") != session]
        finally:
            with contextlib.suppress(Exception):
                pipe.call("Target.closeTarget", {"targetId": target}, timeout=5)
        value = probe["result"]["value"]
        value["math_spans"] = [MathSpan(s["tex"].strip(), s["display"]) for s in value["math_spans"]]
        report = PageReport(url=url, **value)
        _collect_events(report, events, url)
        return report


def _exception_text(details: dict) -> str:
    exc = details.get("exception") or {}
    text = str(exc.get("description") or exc.get("value") or details.get("text", "exception"))
    text = text.splitlines()[0] if text.strip() else "exception"
    if details.get("url"):
        text += f" ({details['url']}:{details.get('lineNumber', 0) + 1})"
    return text


def _collect_events(report: PageReport, events: list[dict], page_url: str) -> None:
    host = urllib.parse.urlsplit(page_url).hostname
    local = {host, "127.0.0.1", "localhost", "::1"}
    urls: dict[str, str] = {}
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            report.js_errors.append(_exception_text(params["exceptionDetails"]))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            report.js_errors.append("console.error: " + " ".join(map(str, args)))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            if entry.get("level") == "error" and entry.get("source") != "network":
                report.js_errors.append(f"{entry.get('source')}: {entry.get('text')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            parts = urllib.parse.urlsplit(url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in local:
                report.external_requests.append(url)
        elif method == "Network.responseReceived":
            response = params["response"]
            if response.get("status", 0) >= 400:
                report.failed_requests.append(f"{response['url']} ({response['status']})")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params["requestId"], "?")
            report.failed_requests.append(f"{url} ({params.get('errorText')})")


def check_page(
    url_or_built_html: str | os.PathLike,
    *,
    site_root: str | os.PathLike | None = None,
    timeout: float = 30,
    screenshot: str | os.PathLike | None = None,
    chromium: str | None = None,
) -> PageReport:
    """Open a page in headless Chromium and report images, typeset equations and errors.

    `url_or_built_html` is an http(s) URL, or a built HTML file: then `site_root` (default: the
    nearest enclosing `_site` folder, else the file's folder) is served on localhost for the check.
    `screenshot` writes a full-page PNG. Raises SiteToolError when Chromium is missing or the page
    cannot be opened; everything the page itself does wrong is in the report (see `.ok`).
    """
    target = str(url_or_built_html)
    if re.match(r"^https?://", target):
        with Browser(chromium) as browser:
            return browser.check(target, timeout=timeout, screenshot=screenshot)
    page = Path(target).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"no such page: {page}")
    if site_root is None:
        site_root = next((p for p in page.parents if p.name == "_site"), page.parent)
    rel = page.relative_to(Path(site_root).resolve()).as_posix()
    with serve_directory(site_root) as base, Browser(chromium) as browser:
        return browser.check(f"{base}/{urllib.parse.quote(rel)}", timeout=timeout, screenshot=screenshot)


# --------------------------------------------------------------------------------------------
# Math in the post's markdown, as kramdown and MathJax will see it
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EquationCount:
    """Equations MathJax should typeset: display blocks and inline spans."""

    display: int
    inline: int

    @property
    def total(self) -> int:
        return self.display + self.inline


@dataclasses.dataclass(frozen=True)
class _Span:
    start: int  # offset of the opening delimiter in the markdown
    end: int    # offset just past the closing delimiter
    tex: str
    display: bool
    single_dollar: bool


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_MASK = "\0"  # stands in for code/comments: not blank, not a delimiter


def _mask(text: str) -> str:
    """`text` with front matter blanked and code/comments replaced by NULs (newlines and offsets kept)."""
    chars = list(text)

    def fill(start: int, end: int, char: str) -> None:
        for i in range(start, end):
            if chars[i] != "\n":
                chars[i] = char

    front = re.match(r"\A---[ \t]*\n.*?^(?:---|\.\.\.)[ \t]*$", text, re.S | re.M)
    if front:
        fill(0, front.end(), " ")
    pos, fence = 0, None
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is None and m and not (front and pos < front.end()):
            fence = m.group(1)
            fill(pos, pos + len(line), _MASK)
        elif fence is not None:
            fill(pos, pos + len(line), _MASK)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line[m.end():].strip():
                fence = None
        pos += len(line)
    masked = "".join(chars)
    for m in re.finditer(r"<!--.*?-->", masked, re.S):
        fill(m.start(), m.end(), _MASK)
    masked = "".join(chars)
    for m in re.finditer(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", masked, re.S):
        fill(m.start(), m.end(), _MASK)
    return "".join(chars)


def _find_single_dollar_end(block: str, i: int) -> int:
    """MathJax's search for the closing `$` of math opened at block[i]: braces balanced, `\\x` skipped."""
    depth, j = 0, i + 1
    while j < len(block):
        c = block[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "$" and depth <= 0:
            return j if j > i + 1 else -1
        elif c == _MASK:
            return -1
        j += 1
    return -1


def _spans(markdown_text: str) -> list[_Span]:
    masked = _mask(markdown_text)
    spans: list[_Span] = []
    for block in re.finditer(r"(?:^[ \t]*\S.*(?:\n|\Z))+", masked, re.M):
        text, base = block.group(0), block.start()
        display = re.fullmatch(r"\s*\$\$(.*?)\$\$\s*", text, re.S)
        if display and "$$" not in display.group(1):
            start = base + text.index("$$")
            end = base + text.rindex("$$") + 2
            spans.append(_Span(start, end, markdown_text[start + 2:end - 2].strip(), True, False))
            continue
        i = 0
        while i < len(text):
            c = text[i]
            if c == "\\":  # kramdown escape (\$ is a literal dollar)
                i += 2
            elif text.startswith("$$", i):  # kramdown math span: verbatim, no escapes inside
                j = text.find("$$", i + 2)
                if j < 0 or _MASK in text[i:j]:
                    i += 2
                    continue
                spans.append(_Span(base + i, base + j + 2, markdown_text[base + i + 2:base + j].strip(), False, False))
                i = j + 2
            elif c == "$":  # not kramdown syntax: reaches MathJax after markdown processing
                j = _find_single_dollar_end(text, i)
                if j < 0:
                    i += 1
                    continue
                spans.append(_Span(base + i, base + j + 1, markdown_text[base + i + 1:base + j].strip(), False, True))
                i = j + 1
            else:
                i += 1
    return spans


def extract_math(markdown_text: str) -> list[MathSpan]:
    """Every equation of a post, in order, as MathJax should find it after Jekyll built the page.

    Display math is a block that is only `$$...$$`; inline math is `$$...$$` inside a block or
    `$...$` (MathJax's rule: braces balanced, `\\$` escaped). Front matter, fenced code, code spans
    and HTML comments are skipped (indented code blocks are not recognised).
    """
    line_starts = [0] + [m.end() for m in re.finditer(r"\n", markdown_text)]
    return [MathSpan(s.tex, s.display, bisect.bisect_right(line_starts, s.start)) for s in _spans(markdown_text)]


def count_equations(markdown_text: str) -> EquationCount:
    """How many display and inline equations MathJax should typeset (compare with `PageReport.math`)."""
    spans = extract_math(markdown_text)
    display = sum(s.display for s in spans)
    return EquationCount(display=display, inline=len(spans) - display)


def _vert(tex: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\vert ", tex)


def protect_inline_math(markdown_text: str) -> str:
    """Rewrite inline math so kramdown passes it to MathJax verbatim.

    `$x$` becomes `$$x$$` (a kramdown math span: no emphasis, no escape eating), and a bare `|`
    in inline math becomes `\\vert ` (a `|` can turn a paragraph into a table). Display blocks, code
    and already-safe spans are left as they are. Idempotent.
    """
    out, last = [], 0
    for span in _spans(markdown_text):
        if span.display:
            continue
        inner = markdown_text[span.start:span.end].strip("$")
        out.append(markdown_text[last:span.start])
        out.append("$$" + _vert(inner) + "$$")
        last = span.end
    out.append(markdown_text[last:])
    return "".join(out)


def lint_math(markdown_text: str) -> list[str]:
    """Warnings for inline math that kramdown may change before MathJax sees it ("line N: ...")."""
    problems = []
    for span in extract_math(markdown_text):
        if span.display:
            continue
        raw = span.tex
        if re.search(r"(?<!\\)\|", raw):
            problems.append(f"line {span.line}: '|' in inline math can turn the paragraph into a table; "
                            f"use \\vert or \\mid: {raw}")
    for span in _spans(markdown_text):
        if span.single_dollar and re.search(r"[\\_*<`\[~]", span.tex):
            line = markdown_text.count("\n", 0, span.start) + 1
            problems.append(f"line {line}: single-dollar math is parsed as markdown by kramdown "
                            f"(escapes, _ and * change); write $${span.tex}$$")
    return problems


def math_mismatches(expected: Sequence[MathSpan], rendered: Sequence[MathSpan]) -> list[str]:
    """Differences between the post's equations and those MathJax typeset, in order; [] if none."""
    a, b = [s.key() for s in expected], [s.key() for s in rendered]
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out += [f"in markdown, not typeset: {k}" for k in a[i1:i2]]
            out += [f"typeset, not in markdown: {k}" for k in b[j1:j2]]
    return out


# --------------------------------------------------------------------------------------------
# Command line: python -m diffusion_post.site {mathjax,build,check} ...
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Small CLI around the functions above; `check` exits 1 when the page is not clean."""
    parser = argparse.ArgumentParser(prog="python -m diffusion_post.site", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mathjax", help="install MathJax into SITE/assets/mathjax")
    p.add_argument("site", nargs="?", default="site")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("build", help="install MathJax, then jekyll build")
    p.add_argument("site", nargs="?", default="site")
    p.add_argument("--dest")
    p = sub.add_parser("check", help="open a page in headless Chromium and print a JSON report")
    p.add_argument("page", help="URL or built HTML file (e.g. site/_site/2024/.../slug.html)")
    p.add_argument("--markdown", help="the post's markdown: compare its equations with the page's")
    p.add_argument("--screenshot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "mathjax":
            print(install_mathjax(args.site, force=args.force))
        elif args.command == "build":
            install_mathjax(args.site)
            print(build_site(args.site, args.dest))
        else:
            report = check_page(args.page, screenshot=args.screenshot)
            data = report.to_dict()
            ok = report.ok
            if args.markdown:
                expected = extract_math(Path(args.markdown).read_text())
                data["math_mismatches"] = math_mismatches(expected, report.math_spans)
                data["lint"] = lint_math(Path(args.markdown).read_text())
                ok = data["ok"] = ok and not data["math_mismatches"]
            print(json.dumps(data, indent=1))
            return 0 if ok else 1
    except (SiteToolError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
