"""`diffusion-post preview`: edit config.yaml (or a template, an input image, the site's layout) and the post
rebuilds itself in the browser.

How it is built, and why:

- Snakemake is the one builder. Each change runs the project's own workflow with its default target, as
  `snakemake --cores N` (what `make post` runs), so only what depends on the change reruns, and the `site` rule's
  `jekyll build` stays the only writer of site/_site. It runs inside this process (Resident), so that Snakemake,
  torch and the backend load once, not at every save; after an edit of the package's own code, in a new process. Jekyll's `jekyll serve --livereload` is not used: it
  would be a second builder of the site, and it reloads the page at each file it sees change (the post first, then
  each figure as it is published), where the preview reloads once, when the whole build is done.
- This process serves site/_site itself (`serve_site`: the standard library's HTTP server, on 127.0.0.1, under the
  site's `baseurl`) and adds, in each HTML response only and never on disk, a one-line script that listens to
  /__preview__/events (server-sent events) and reloads the page when the preview's state changes, and, while an
  edit is bad, the banner: its one-line message, HTML-escaped, at the top of the page. So the preview shows the very
  files `make post` publishes, and nothing of the preview can be published. One port serves both.
- watchfiles watches the folders that hold the sources (`Sources.watched`: folders, since editors that save by
  renaming end a watch on a file), and a change counts when it is a source (`Sources`): config.yaml, templates/,
  the site's own files (`site.is_source`), the input images and mask files config.yaml names, the folders of
  backend/images. What the build writes (figures/, results/, site/_site, site/_posts, site/assets/figures) never
  counts, or a build would trigger the next. The sources are read again from each new config.
- A build starts once no change has come for `quiet` seconds, so saves in quick succession give one build; changes
  during a build are kept by the watcher and give exactly one more build after it.
- Before Snakemake starts, the config check the workflow runs (config.load: torch-free, fast). A bad edit runs no
  build: the last good site stays on screen with the check's line in the banner (and in the terminal) until the
  config is fixed. A build that fails later (a job, `jekyll build`) shows its error line the same way.
- Ctrl-C (or a plain kill) stops the server, the watcher and a running build: Snakemake, in this process, stops
  its jobs at their next sampling step and waits for them (interrupt.py); a running `jekyll build` runs in its own
  session, so the terminal's Ctrl-C does not reach it, and finishes; no half-written file is left, and the next build
  finishes the work. (A build in a new process, after an edit of the package's code, gets one SIGINT and is waited
  for.)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import html
import http.server
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import backends, site
from . import config as post_config

__all__ = ["PreviewError", "Sources", "Status", "serve_site", "with_preview", "snakemake", "Resident", "Preview", "run"]

EVENTS = "/__preview__/events"
DEFAULT_PORT = 4000
QUIET = 0.4  # seconds without a change before a build starts
BANNER_STYLE = ("position:sticky;top:0;z-index:1000;margin:0;padding:.6em 1em;background:#a00020;color:#fff;"
                "font:15px/1.4 system-ui,sans-serif;white-space:pre-wrap;overflow-wrap:anywhere")
NOT_BUILT = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Building the post</title></head>"
             "<body><p>Building the post: this page reloads by itself when it is ready (progress in the terminal).</p>"
             "</body></html>")


class PreviewError(RuntimeError):
    """The preview cannot start (no project here, a port in use); the message is one line."""


# --------------------------------------------------------------------------------------------
# What a build reads
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sources:
    """The files a writer edits and a build reads (absolute, normalised paths): config.yaml, the input images and
    mask files config.yaml names; every file under templates/ and under backend/images' folders; the site's own
    files (site.is_source)."""

    root: str
    files: frozenset[str]
    folders: tuple[str, ...]

    @classmethod
    def of(cls, root: Path, config: dict | None) -> "Sources":
        """The sources of the project at `root` with `config` (None: a config that does not load: config.yaml and
        the folders only)."""
        def path(value: str) -> str:
            return os.path.normpath(os.path.join(root, os.path.expanduser(value)))

        files, folders = {path("config.yaml")}, [path("templates")]
        if config is not None:
            files |= {path(value) for value in config["inputs"].values() if not value.startswith(post_config.BUILTIN)}
            for name in post_config.figure_table(config):
                mask = post_config.resolve(config, name).get("mask")
                if isinstance(mask, str) and mask not in config["inputs"]:
                    files.add(path(mask))
            folders += [path(folder) for folder in config["backend"].get("images", [])]
        return cls(os.path.normpath(root), frozenset(files), tuple(folders))

    def __contains__(self, path: str) -> bool:
        path = os.path.normpath(path)
        if path in self.files or any(path.startswith(folder + os.sep) for folder in self.folders):
            return True
        site_dir = os.path.join(self.root, "site")
        return path.startswith(site_dir + os.sep) and site.is_source(os.path.relpath(path, site_dir))

    def is_image(self, path: str) -> bool:
        """Whether `path` is one of the sources that is an image (an input, a mask, one of backend/images): not
        config.yaml, a template or a file of the site."""
        path = os.path.normpath(path)
        return path in self and path != os.path.join(self.root, "config.yaml") and not any(
            path.startswith(os.path.join(self.root, folder) + os.sep) for folder in ("templates", "site"))

    def watched(self) -> tuple[str, ...]:
        """The folders to watch, each without its subfolders (they are listed too): the project folder (config.yaml),
        templates/ and site/ (not what the build writes there), the folders of the input images and masks, and the
        backend/images folders. Folders, not files: an editor that saves by renaming a new file over the old one
        would end a watch on the file itself. Only these: a recursive watch of the project would also watch
        .git/, a virtualenv, the caches and the outputs."""
        def tree(top: str, keep=lambda folder: True) -> list[str]:
            found = []
            for folder, subfolders, _ in os.walk(top):
                subfolders[:] = [d for d in subfolders if keep(os.path.join(folder, d))]
                found.append(folder)
            return found

        site_dir = os.path.join(self.root, "site")
        watched = {self.root, *tree(site_dir, lambda d: site.is_source(os.path.relpath(d, site_dir)))}
        watched |= {os.path.dirname(f) for f in self.files}
        for folder in self.folders:
            watched.update(tree(folder))
        return tuple(sorted(d for d in watched if os.path.isdir(d)))


# --------------------------------------------------------------------------------------------
# Serving the site, with the reload script and the banner
# --------------------------------------------------------------------------------------------

class Status:
    """What the open pages should show besides the site: a token that changes when they must reload (after a build
    that ran jobs, or when the banner comes or goes), and the banner's message (None: no banner)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._session = f"{os.getpid()}-{time.time_ns()}"  # a page from an earlier preview reloads too
        self._count = 0
        self.message: str | None = None
        self.prefix = ""  # the site's baseurl
        self.closed = False

    @property
    def token(self) -> str:
        return f"{self._session}.{self._count}"

    def update(self, *, rebuilt: bool = False, message: str | None = None) -> None:
        with self._changed:
            if rebuilt or message != self.message:
                self._count += 1
                self.message = message
                self._changed.notify_all()

    def wait(self, seen: str | None, timeout: float) -> str:
        """The token once it differs from `seen` (at once for None), or after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self.token != seen or self.closed, timeout)
            return self.token

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()


def with_preview(page: str, token: str, message: str | None) -> str:
    """An HTML page with the preview's reload script and, for a message, the banner (escaped) at its top."""
    script = (f'<script>new EventSource("{EVENTS}").onmessage = (event) => {{ if (event.data !== "{token}") '
              f'location.reload(); }};</script>')
    if message is not None:
        banner = (f'<div id="preview-banner" role="alert" title="diffusion-post preview: not rebuilt, the page shows '
                  f'the last good build" style="{BANNER_STYLE}">{html.escape(message)}</div>')
        page, found = re.subn(r"<body\b[^>]*>", lambda m: m.group(0) + banner, page, count=1, flags=re.I)
        if not found:
            page = banner + page
    end = page.lower().rfind("</body>")
    return page[:end] + script + page[end:] if end >= 0 else page + script


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """A built site under its base URL `prefix` ("" or "/REPO"): anything outside it is a 404, as on GitHub Pages."""

    prefix = ""

    def inside(self) -> bool:
        path = urllib.parse.urlsplit(self.path).path
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def send_head(self):
        if not self.inside():
            self.send_error(404, "outside the site's base URL")
            return None
        return super().send_head()

    def translate_path(self, path: str) -> str:
        path = urllib.parse.urlsplit(path).path
        return super().translate_path(path[len(self.prefix):] or "/")

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


class PreviewHandler(SiteHandler):
    """The site as it is being edited: HTML pages get the reload script and the banner (`with_preview`), nothing is
    cached (a reload shows rebuilt figures), and /__preview__/events streams the status token."""

    status: Status

    @property
    def prefix(self) -> str:
        return self.status.prefix

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == EVENTS:
            self.send_events()
        else:
            super().do_GET()

    def send_head(self):
        page = self.page()
        if page is None:
            return super().send_head()
        body = with_preview(page, self.status.token, self.status.message).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def page(self) -> str | None:
        """The HTML this request gets: a built page; NOT_BUILT for a page missing while the site has no index.html
        (before the first build; while `jekyll build` runs); None for anything else (served as is)."""
        if not self.inside():
            return None
        url_path = urllib.parse.urlsplit(self.path).path
        path = Path(self.translate_path(self.path))
        if path.is_dir() and url_path.endswith("/"):
            path = path / "index.html"
        if path.suffix == ".html" and path.is_file():
            return path.read_text(encoding="utf-8")
        if url_path.endswith(("/", ".html")) and not (Path(self.directory) / "index.html").is_file():
            return NOT_BUILT
        return None

    def send_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        seen = None
        with contextlib.suppress(OSError):  # the page went away
            while not self.status.closed:
                token = self.status.wait(seen, timeout=15)
                self.wfile.write(f"data: {token}\n\n".encode() if token != seen else b": still here\n\n")
                self.wfile.flush()
                seen = token


@contextlib.contextmanager
def serve_site(directory: str | os.PathLike, prefix: str = "", *, host: str = "127.0.0.1", port: int = 0,
               status: Status | None = None) -> Iterator[str]:
    """Serve the built site `directory` on `host`:`port` (0: a free one) in a thread, under `prefix` (the site's
    baseurl, e.g. "/REPO"); with a `status`, as the preview (PreviewHandler, whose prefix is status.prefix).
    Yields the site's URL `http://host:port{prefix}`. A port in use raises PreviewError."""
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    if status is None:
        handler = type("Handler", (SiteHandler,), {"prefix": prefix})
    else:
        status.prefix = prefix
        handler = type("Handler", (PreviewHandler,), {"status": status})
    try:
        server = http.server.ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(directory)))
    except OSError as error:
        raise PreviewError(f"cannot serve on {host}:{port} ({error.strerror.lower()}): stop what uses it (another "
                           f"preview, `jekyll serve`), or pick another port with --port N") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}{prefix}"
    finally:
        if status is not None:
            status.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# One build: the workflow, with a progress line
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """How a build went: `jobs` run (0: everything was up to date); `error`: one line, for a failed build."""

    jobs: int = 0
    error: str | None = None


class Progress:
    """Reads Snakemake's log line by line; `feed` returns "k of n: FIGURE (RULE)" when a job starts."""

    def __init__(self) -> None:
        self.total, self.done, self.rule, self.target = 0, 0, None, None

    def feed(self, line: str) -> str | None:
        if m := re.match(r"^total\s+(\d+)\s*$", line):  # the last row of the job stats table
            self.total = int(m[1])
        elif m := re.match(r"^(\d+) of (\d+) steps", line):
            self.done, self.total = int(m[1]), int(m[2])
        elif m := re.match(r"^(?:local)?rule (\w+):$", line.rstrip()):
            self.rule, self.target = m[1], None
        elif self.rule and (m := re.match(r"^\s+output: ([^,\s]+)", line)):
            self.target = m[1]
        elif self.rule and (m := re.match(r"^\s+wildcards: .*\bfigure=([^,\s]+)", line)):
            self.target = m[1]
        elif self.rule and not line.startswith((" ", "\t")):  # the job's block has ended: it runs
            started = f"{self.done + 1} of {self.total}: {self.target} ({self.rule})" if self.target else None
            self.rule = None  # (a job without output, such as `all`, makes nothing to show)
            return started
        return None


def error_line(log: list[str]) -> str:
    """The line of a failed Snakemake run's log that says what went wrong."""
    lines = [line.strip() for line in log if line.strip()]
    for k, line in enumerate(lines):  # a failed job: "RuleException:", "SiteToolError in file ...", the message
        if re.match(r"^\w+(Error|Exception) in (file|rule|line)\b", line) and k + 1 < len(lines):
            return " ".join(lines[k + 1].split())
    errors = [line for line in lines if re.match(r"^(Error|\w+Error|\w+Exception)\b", line)]
    return (errors or lines or ["snakemake failed (no output)"])[-1]


class Follow:
    """What a build's log says, line by line: the last lines kept (for the error line), a progress line to `report`
    as each job starts, and at the end the Outcome."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report, self.progress, self.log = report, Progress(), collections.deque(maxlen=400)

    def line(self, line: str) -> None:
        self.log.append(line.rstrip("\n"))
        if started := self.progress.feed(line):
            self.report(started)

    def outcome(self, succeeded: bool) -> Outcome:
        if not succeeded:
            return Outcome(self.progress.done, error_line(list(self.log)))
        return Outcome(0 if any(line.startswith("Nothing to be done") for line in self.log) else self.progress.done)


def snakemake(root: Path, cores: int | str, report: Callable[[str], None]) -> Outcome:
    """Run the workflow's default target in `root` in a new process (`python -m snakemake --cores N`); `report` gets
    a progress line as each job starts. On Ctrl-C Snakemake gets one SIGINT, and this waits for it to stop before
    raising KeyboardInterrupt again."""
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores)]
    run = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    follow = Follow(report)
    try:
        for line in run.stdout:
            follow.line(line)
        run.wait()
    except KeyboardInterrupt:
        run.send_signal(signal.SIGINT)
        run.communicate()
        raise
    return follow.outcome(run.returncode == 0)


class Lines(io.TextIOBase):
    """A text stream that hands each complete line to `line`; jobs write from Snakemake's worker threads."""

    def __init__(self, line: Callable[[str], None]) -> None:
        self._line, self._partial, self._lock = line, "", threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:  # outside the lock: what `line` does may write here again
            self._line(line)
        return len(text)


def package_code() -> dict[str, tuple[int, int]]:
    """The modules of this package (the code a build in this process runs), with their mtimes and sizes."""
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(__file__).parent.rglob("*.py"))}


class Resident:
    """The preview's builder: Snakemake run inside the preview's process, through its own command line
    (snakemake.cli's parse_args and args_to_api: the workflow profile applies as for `snakemake` in a shell), so
    that Snakemake, torch and the backend (its models, its image set, its denoisers' caches) are imported and loaded
    once, for every build. A one-prompt edit then costs its jobs, the post and `jekyll build`, not Snakemake's
    start (~1.5 s), torch's import and the backend's load (~1.5 s) and the interpreter's exit (~1 s) each time.

    Once the package's own code has changed since the first build (its modules, loaded here, would be stale), each
    build runs `snakemake` in a new process instead (said once), and what this process loaded is released. The
    Preview drops the loaded backends when an image of the backend's set changes (a loaded set is keyed by its
    folders, not by their files)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the Snakefile wraps SIGINT's handler (interrupt.install), Snakemake's
    # scheduler sets SIGTERM's, at each build: both are put back after it

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.code: dict[str, tuple[int, int]] | None = None

    def __call__(self, root: Path, cores: int | str, report: Callable[[str], None]) -> Outcome:
        code = package_code()
        if self.code is None:
            self.code = code
        elif code != self.code:
            if self.code:  # once
                self.say("the package's code changed since the preview started: each build now runs snakemake in a "
                         "new process (restart the preview to build in this one again)")
                self.code = {}
                from . import backends

                backends.forget(everything=True)
                backends.release_text_encoders()
            return snakemake(root, cores, report)
        return self.build(Path(root), cores, report)

    @classmethod
    def build(cls, root: Path, cores: int | str, report: Callable[[str], None]) -> Outcome:
        from snakemake.cli import args_to_api, parse_args

        from . import backends, interrupt, provenance

        backends.forget()  # a new build: what an earlier one loaded stays until this one loads something else
        provenance.code_version.cache_clear()  # a commit made while the preview runs is the records' code version
        follow, here = Follow(report), os.getcwd()
        main = threading.current_thread() is threading.main_thread()
        handlers = {number: signal.getsignal(number) for number in cls.SIGNALS} if main else {}
        try:
            os.chdir(root)  # where `snakemake` looks for the Snakefile and its profile
            with contextlib.redirect_stderr(Lines(follow.line)):
                parser, args = parse_args(["--cores", str(cores)])
                succeeded = args_to_api(args, parser)
        except SystemExit as stop:  # the Snakefile's one-line config error (a message), or Snakemake's exit status
            follow.line(stop.code if isinstance(stop.code, str) else f"snakemake stopped (exit status {stop.code})")
            succeeded = stop.code in (0, None)
        finally:
            os.chdir(here)
            for number, handler in handlers.items():
                signal.signal(number, handler)
        if interrupt.STOP.is_set():  # Ctrl-C: Snakemake stopped its jobs and returned
            raise KeyboardInterrupt
        return follow.outcome(succeeded)


# --------------------------------------------------------------------------------------------
# The loop: watch, check, build
# --------------------------------------------------------------------------------------------

class Preview:
    """Watches the project at `root` (the current folder) and rebuilds it, keeping `status` up to date for the
    pages. `build` runs the workflow (default: Resident, Snakemake in this process); `say` prints a line for the
    terminal."""

    def __init__(self, root: Path, status: Status, *, cores: int | str = "all", quiet: float = QUIET, url: str | None = None,
                 build: Callable[[Path, int, Callable[[str], None]], Outcome] | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.root, self.status, self.cores, self.quiet = Path(root).resolve(), status, cores, quiet
        self.url = url  # where the site is served, to name the post's page after the first build
        self.say = say or functools.partial(print, "preview:", flush=True, file=sys.stdout)  # not a build's log
        self._build = build or Resident(self.say)
        self.sources = Sources.of(self.root, self.load()[0])

    def load(self) -> tuple[dict | None, str | None]:
        """(the config, None), checked as the workflow checks it, or (None, the check's one-line message)."""
        path = os.path.relpath(self.root / "config.yaml")  # the messages name it as Snakemake does, from here
        try:
            return post_config.load(path), None
        except post_config.ConfigError as error:
            return None, str(error)
        except OSError as error:
            return None, f"{path}: {error.strerror.lower()}: restore it"

    def check(self) -> dict | None:
        """The config; None, with the message in the banner and the terminal, when it is bad."""
        config, message = self.load()
        if message is not None and message != self.status.message:
            self.say(f"error: {message} (the page keeps the last good build, with this line at its top)")
            self.status.update(message=message)
        return config

    def build(self, changed: Iterable[str] = ()) -> None:
        """Run the workflow (after the `changed` paths were saved) and show the outcome."""
        if any(self.sources.is_image(path) for path in changed):
            backends.forget(everything=True)  # a resident backend's image set may hold the old image
        started = time.monotonic()
        self.say("building ...")
        outcome = self._build(self.root, self.cores, lambda line: self.say(f"  {line}"))
        seconds = time.monotonic() - started
        if outcome.error is not None:
            self.say(f"error: {outcome.error} (after {seconds:.1f} s; the page keeps the last good build)")
        elif outcome.jobs:
            self.say(f"rebuilt in {seconds:.1f} s ({outcome.jobs} jobs): the page reloads")
        else:
            self.say(f"up to date ({seconds:.1f} s)")
        prefix = site.baseurl(self.root / "site")
        if prefix != self.status.prefix:
            self.say(f"the site's baseurl is now {prefix or '(none)'}: it is served under {prefix or ''}/")
            self.status.prefix = prefix
        self.status.update(rebuilt=outcome.jobs > 0, message=outcome.error)
        if self.url and outcome.error is None:
            with contextlib.suppress(FileNotFoundError, StopIteration):
                dest = self.root / "site" / "_site"
                post = site.built_post_path(dest, next((self.root / "site" / "_posts").glob("*.md")).name)
                self.say(f"the post: {self.url}/{post.relative_to(dest).as_posix()}")
                self.url = None  # once

    def watch(self, stop: threading.Event | None = None) -> None:
        """Build now, then after every change of a source, until `stop` is set (or Ctrl-C)."""
        import watchfiles

        pending, changed = True, set()  # bring the post up to date first
        while True:
            folders = self.sources.watched()
            changes = watchfiles.watch(*folders, watch_filter=lambda change, path: path in self.sources,
                                       recursive=False, stop_event=stop, rust_timeout=int(self.quiet * 1000),
                                       yield_on_timeout=True)
            with contextlib.closing(changes):
                try:
                    for batch in changes:
                        if batch:  # wait until `quiet` seconds pass without a change
                            pending = True
                            changed |= {path for _, path in batch}
                            continue
                        if not pending:
                            continue
                        pending = False
                        config = self.check()
                        self.sources = Sources.of(self.root, config) if config is not None else self.sources
                        if self.sources.watched() != folders:  # watch the new folders first, then build
                            pending = config is not None
                            break
                        if config is not None:
                            self.build(changed)
                            changed = set()
                    else:
                        return
                except FileNotFoundError:  # a folder went away before its watch began: list them again
                    pending = True


def run(port: int = DEFAULT_PORT, cores: int | str = "all", host: str = "127.0.0.1") -> None:
    """`diffusion-post preview` in the project in the current folder: serve, build, watch, until Ctrl-C."""
    root = Path.cwd()
    if not (root / "Snakefile").is_file() or not (root / "config.yaml").is_file():
        raise PreviewError(f"no Snakefile and config.yaml in {root}: run the preview in the project's folder")
    # Interactive: Ctrl-C (and a plain kill) stop it, even when it was started from a script in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    status = Status()
    with serve_site(root / "site" / "_site", site.baseurl(root / "site"), host=host, port=port, status=status) as url:
        print(f"preview: serving {url}/ (Ctrl-C stops); watching config.yaml, templates/, the input images and site/",
              flush=True)
        Preview(root, status, cores=cores, url=url).watch()
