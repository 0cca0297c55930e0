"""`diffusion-post preview`: what it watches, its debounce, the banner, a port in use (a stand-in build: no
Snakemake), then the real thing on a copy of the built post in headless Chromium: edit a prompt and the page
reloads with the new figure, a bad edit shows the check's line in a banner, Ctrl-C stops a running build."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, needs, snakemake, wait_until
from live_preview import PreviewProcess, edit_config, images, mark, reloaded, set_prompt
from PIL import Image

from diffusion_post import backends
from diffusion_post import config as post_config
from diffusion_post import preview as preview_mod
from diffusion_post import site
from diffusion_post.preview import Outcome, Preview, Sources, Status, error_line, serve_site, with_preview
from diffusion_post.project import copy_project

TIMEOUT = 900  # seconds for a rebuild on a loaded 2-core machine; every wait polls, none sleeps for it


def check_line(root: Path) -> str:
    """The one line the workflow's config check gives for `root`'s config.yaml, as the preview names the file."""
    with pytest.raises(post_config.ConfigError) as error:
        post_config.load(os.path.relpath(root / "config.yaml"))
    return str(error.value)


# ------------------------------------------------------------------ the pieces

def test_banner_is_escaped_and_script_is_added():
    page = "<html><body class='x'><p>post</p></body></html>"
    shown = with_preview(page, "7.1", "config: at x: '<img src=x onerror=alert(1)>' & more")
    assert "<body class='x'><div id=\"preview-banner\"" in shown
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown and "<img" not in shown
    assert shown.index("EventSource") > shown.index("<p>post</p>") and shown.endswith("</script></body></html>")
    assert "preview-banner" not in with_preview(page, "7.1", None)


def test_sources_are_what_a_writer_edits(tmp_path):
    root = tmp_path / "project"
    outside = tmp_path / "photos" / "mine.png"
    config = {"inputs": {"a": "builtin:test_photo", "b": "images/b.png", "c": str(outside)},
              "backend": {"name": "ideal", "images": ["my_set"]}, "defaults": {}, "seed": 0,
              "figures": {"editing": {"inpaint": {"technique": "inpaint", "image": "b", "mask": "masks/m.png"}}}}
    sources = Sources.of(root, config)
    for path in ["config.yaml", "templates/sections/hybrids.md.j2", "images/b.png", "masks/m.png", "my_set/x/y.png",
                 "site/_layouts/post.html", "site/_config.yml", "site/index.html", "site/assets/css/style.css"]:
        assert str(root / path) in sources, path
    assert str(outside) in sources
    for path in ["figures/hybrid.png", "results/hybrid.safetensors", "results/inputs/test_photo.png",
                 "site/_site/index.html", "site/_posts/2026-11-28-post.md", "site/assets/figures/hybrid.png",
                 "site/assets/mathjax/tex-chtml.js", "site/.jekyll-cache/x", "site/_layouts/.post.html.swp",
                 ".snakemake/log/x.log", "Snakefile", "src/diffusion_post/post.py"]:
        assert str(root / path) not in sources, path
    # watched: folders, each on its own (not recursively), and only those that can hold a source
    for folder in ["site/_layouts", "site/assets/css", "site/_site/assets", "site/_posts", "site/assets/figures/x",
                   "site/.jekyll-cache", "templates/sections", "images", "masks", "my_set/x", "results/inputs",
                   ".venv/lib", ".git/objects"]:
        (root / folder).mkdir(parents=True)
    outside.parent.mkdir()
    assert set(sources.watched()) == {str(root / f) for f in [
        "", "site", "site/_layouts", "site/assets", "site/assets/css", "templates", "templates/sections", "images",
        "masks", "my_set", "my_set/x"]} | {str(outside.parent)}


def test_an_image_of_the_set_is_told_from_the_other_sources(tmp_path):
    root = tmp_path / "project"
    config = {"inputs": {"b": "images/b.png"}, "backend": {"name": "ideal", "images": ["my_set"]}, "defaults": {},
              "seed": 0, "figures": {"editing": {"inpaint": {"technique": "inpaint", "image": "b", "mask": "masks/m.png"}}}}
    sources = Sources.of(root, config)
    for path in ["images/b.png", "masks/m.png", "my_set/x/y.png"]:
        assert sources.is_image(str(root / path)), path
    for path in ["config.yaml", "templates/sections/hybrids.md.j2", "site/_layouts/post.html", "figures/b.png"]:
        assert not sources.is_image(str(root / path)), path


def test_a_new_build_drops_the_backends_it_no_longer_uses_before_loading_another(monkeypatch):
    monkeypatch.setattr(backends, "_LOADED", {})
    monkeypatch.setattr(backends, "_USED", set())
    monkeypatch.setattr(backends, "_load", lambda backend: object())
    a, b, c = ({"name": "ideal", "denoiser": "exact", "temperature": t} for t in (0.01, 0.02, 0.03))
    loaded = {"a": backends.load_backend(a), "b": backends.load_backend(b)}  # one build loads both: both stay
    assert backends.load_backend(a) is loaded["a"] and backends.load_backend(b) is loaded["b"]
    backends.forget()  # the next build asks for a, then for c (an edit of b's options): b goes before c loads
    assert backends.load_backend(a) is loaded["a"]
    backends.load_backend(c)
    assert set(backends._LOADED) == {json.dumps(x, sort_keys=True) for x in (a, c)}
    backends.forget()
    backends.forget()  # a build that sampled nothing (a template edit) drops nothing
    assert backends.load_backend(a) is loaded["a"]
    backends.forget(everything=True)  # an image of the set changed
    assert backends._LOADED == {}


def test_interrupt_chains_in_front_of_snakemakes_sigterm_handler():
    """The Snakefile's onstart puts interrupt's handler in front of the scheduler's SIGTERM handler: a kill sets STOP
    (the sampling jobs stop at their next step, the preview stops) and still reaches Snakemake."""
    from diffusion_post import interrupt

    seen, before = [], signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # as Snakemake's scheduler does
        interrupt.install(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: seen, what="the handler")
        assert interrupt.STOP.is_set() and seen == [signal.SIGTERM]
    finally:
        interrupt.STOP.clear()
        signal.signal(signal.SIGTERM, before)


def test_resident_builds_here_until_the_package_code_changes(monkeypatch, tmp_path):
    calls, said = [], []
    monkeypatch.setattr(preview_mod.Resident, "build", staticmethod(lambda *args: calls.append("here") or Outcome()))
    monkeypatch.setattr(preview_mod, "snakemake", lambda *args: calls.append("new process") or Outcome())
    code = {"a.py": (1, 10)}
    monkeypatch.setattr(preview_mod, "package_code", lambda: dict(code))
    resident = preview_mod.Resident(said.append)
    resident(tmp_path, 1, print)
    resident(tmp_path, 1, print)
    code["a.py"] = (2, 10)  # an edit of the package: its modules here are stale
    resident(tmp_path, 1, print)
    resident(tmp_path, 1, print)
    assert calls == ["here", "here", "new process", "new process"]
    assert len(said) == 1 and "new process" in said[0]


def test_site_sources_are_the_site_rules_inputs():
    """The site rule reruns for exactly what the preview watches in site/ (site/index.html was missing)."""
    assert str(ROOT / "site" / "index.html") in site.source_files(ROOT / "site")
    assert all(site.is_source(Path(p).relative_to(ROOT / "site")) for p in site.source_files(ROOT / "site"))


class StandInBuild:
    """Stands in for Snakemake: records the config.yaml each build saw; while `hold` is clear, a build waits."""

    def __init__(self, error: str | None = None):
        self.seen: list[str] = []
        self.hold, self.running = threading.Event(), threading.Event()
        self.hold.set()
        self.error = error

    def __call__(self, root: Path, cores: int, report) -> Outcome:
        self.seen.append((root / "config.yaml").read_text())
        self.running.set()
        assert self.hold.wait(120)
        self.running.clear()
        return Outcome(jobs=1, error=self.error)


QUIET = 1.0  # the test's quiet time: saves 0.05 s apart are "quick succession" with a wide margin


@contextlib.contextmanager
def watching(root: Path, build: StandInBuild):
    """Preview.watch of `root` in a thread, with the stand-in build, once its first build is done."""
    status, said = Status(), []
    preview = Preview(root, status, build=build, quiet=QUIET, say=said.append)
    stop = threading.Event()
    thread = threading.Thread(target=preview.watch, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(build.seen) == 1 and not build.running.is_set(), what="the first build")
        yield status, said
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


def settle():
    """Long enough for a build that should not come to have come (several quiet times)."""
    time.sleep(4 * QUIET)


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    copy_project(ROOT, root, ROOT / ".cache")
    return root


def test_saves_in_quick_succession_give_one_build(project):
    build = StandInBuild()
    with watching(project, build):
        for k in range(5):
            last = edit_config(project, set_prompt("hybrid_rainy_day_dog", 1, f"a photo of dog number {k}"))
            time.sleep(0.05)
        wait_until(lambda: len(build.seen) == 2, what="the second build")
        settle()
        assert build.seen[1:] == [last]


def test_a_change_during_a_build_gives_one_more_build(project):
    build = StandInBuild()
    with watching(project, build):
        build.hold.clear()
        first = edit_config(project, set_prompt("hybrid_rainy_day_dog", 1, "a photo of a cat"))
        wait_until(build.running.is_set, what="the second build to start")
        for k in range(3):
            last = edit_config(project, set_prompt("hybrid_rainy_day_dog", 1, f"a photo of cat number {k}"))
            time.sleep(0.3)
        build.hold.set()
        wait_until(lambda: len(build.seen) == 3, what="the build after the one that ran")
        settle()
        assert build.seen[1:] == [first, last]


def test_saves_by_renaming_are_seen_each_time(project):
    """Editors such as vim save by renaming a new file over the old one: each save is seen, not the first only."""
    build = StandInBuild()
    with watching(project, build):
        for k in range(2, 4):
            config = yaml.safe_load((project / "config.yaml").read_text())
            set_prompt("hybrid_rainy_day_dog", 1, f"a photo of dog number {k}")(config)
            (project / ".config.yaml.new").write_text(yaml.safe_dump(config, sort_keys=False))
            os.replace(project / ".config.yaml.new", project / "config.yaml")
            wait_until(lambda: len(build.seen) == k, what=f"build {k}")


def test_what_the_build_writes_starts_no_build_and_sources_do(project, tmp_path):
    build = StandInBuild()
    with watching(project, build):
        for output in ["figures/x.png", "results/x.safetensors", "site/_site/index.html", "site/_posts/x.md",
                       "site/assets/figures/x.png", "site/assets/mathjax/x.js", ".snakemake/log/x.log"]:
            (project / output).parent.mkdir(parents=True, exist_ok=True)
            (project / output).write_text("written by a build")
        settle()
        assert len(build.seen) == 1
        for k, source in enumerate(["templates/sections/hybrids.md.j2", "site/_layouts/post.html",
                                    "site/assets/css/style.css", "site/_config.yml"], start=2):
            with open(project / source, "a") as f:
                f.write("\n")
            wait_until(lambda: len(build.seen) == k, what=f"a build for {source}")

        # an input image outside the project, named by a new config: watched from then on
        photo = tmp_path / "photos" / "mine.png"
        photo.parent.mkdir()
        Image.new("RGB", (64, 64), "red").save(photo)
        edit_config(project, lambda config: config["inputs"].update(mine=str(photo)))
        wait_until(lambda: len(build.seen) == 6, what="the build for the new config")
        Image.new("RGB", (64, 64), "blue").save(photo)
        wait_until(lambda: len(build.seen) == 7, what="a build for the edited outside image")
        settle()
        assert len(build.seen) == 7


def test_bad_config_shows_the_check_line_until_fixed(project):
    build = StandInBuild()
    with watching(project, build) as (status, said):
        good = (project / "config.yaml").read_text()
        edit_config(project, lambda config: config["figures"]["hybrids"]["hybrid_rainy_day_dog"].update(kernel_size=32))
        line = check_line(project)
        assert "kernel_size 32 must be odd" in line
        wait_until(lambda: status.message == line, what="the banner")
        assert any(line in s for s in said)
        (project / "config.yaml").write_text("backend: [\n")  # YAML syntax error
        line = check_line(project)
        wait_until(lambda: status.message == line, what="the YAML error in the banner")
        assert "YAML syntax error" in line
        settle()
        assert len(build.seen) == 1  # no build for a bad config
        (project / "config.yaml").write_text(good)
        wait_until(lambda: len(build.seen) == 2 and status.message is None, what="the fixed build")


def test_a_failed_build_shows_its_error(project):
    build = StandInBuild(error="SiteToolError: jekyll build failed (exit 1): Liquid syntax error")
    with watching(project, build) as (status, said):
        assert status.message == build.error
        assert any(build.error in s for s in said)


def test_a_port_in_use_is_one_line(project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "diffusion_post.cli", "preview", "--port", str(port)], cwd=project,
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"diffusion-post: error: cannot serve on 127.0.0.1:{port} (address already in use): stop what uses it (another "
        f"preview, `jekyll serve`), or pick another port with --port N"]
    assert not (project / ".snakemake").exists()  # nothing was built


def test_before_the_first_build_the_page_says_so(tmp_path):
    status = Status()
    with serve_site(tmp_path / "_site", status=status) as base:
        page = urllib.request.urlopen(f"{base}/").read().decode()
        assert "Building the post" in page and f'event.data !== "{status.token}"' in page
        # a failed `site` job leaves the built pages but not index.html (Snakemake removed it): pages stay readable
        (tmp_path / "_site").mkdir()
        (tmp_path / "_site" / "post.html").write_text("<html><body>the post</body></html>")
        assert "the post" in urllib.request.urlopen(f"{base}/post.html").read().decode()


def test_a_failed_job_is_named_by_its_error_line():
    log = ["Select jobs to execute...", "RuleException:",
           'SiteToolError in file "/p/workflow/rules/post.smk", line 58:',
           "jekyll build failed (exit 1): Liquid Exception: Liquid syntax error (line 17): 'if' tag was never closed",
           "Error in rule site:", "    jobid: 1", "Shutting down, this might take some time.", "WorkflowError:",
           "At least one job did not complete successfully."]
    assert error_line(log) == log[3]
    assert error_line(["Building DAG of jobs...", "LockException:", "Error: Directory cannot be locked."]) == \
        "Error: Directory cannot be locked."


@pytest.mark.parametrize("status", [None, Status()], ids=["plain", "preview"])
def test_serve_site_under_a_base_url(tmp_path, status):
    (tmp_path / "index.html").write_text("<html><body>home</body></html>")
    with serve_site(tmp_path, "REPO/", status=status) as base:
        assert base.endswith("/REPO")
        page = urllib.request.urlopen(f"{base}/").read().decode()
        assert page.startswith("<html><body>home") and ("EventSource" in page) == (status is not None)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base.removesuffix("/REPO") + "/index.html")


# ------------------------------------------------------------------ the real thing, in a browser

def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def preview(build, tmp_path_factory):
    """The preview running on a copy of the built post."""
    root = tmp_path_factory.mktemp("preview") / "project"
    shutil.copytree(build, root, symlinks=True)
    process = PreviewProcess(root, TIMEOUT)
    try:
        yield process
    finally:
        process.stop()


EDITED = "hybrid_gray_color"  # the quickest hybrid to sample, with its stage II
NEW_PROMPT = "a photo of a cat"


@needs("jekyll")
def test_a_resident_build_makes_the_bytes_snakemake_makes_and_loads_the_backend_once(build, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    for copy in (here, there):
        shutil.copytree(build, copy, symlinks=True)
    resident, loads = preview_mod.Resident(lambda line: None), []
    handlers = [signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)]
    for k, prompt in enumerate(["a photo of a cat", "a photo of a lighthouse"]):
        edit_config(here, set_prompt(EDITED, 0, prompt))
        outcome = resident(here, 1, print)
        assert outcome.error is None and outcome.jobs > 0
        loads.append({id(cascade) for cascade in backends._LOADED.values()})
        assert [signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)] == handlers  # put back
    assert loads[0] and loads[0] == loads[1]  # the second build found the backend loaded
    edit_config(there, set_prompt(EDITED, 0, "a photo of a lighthouse"))
    snakemake(there, "--cores", "1")
    for name in (f"figures/{EDITED}.png", f"results/{EDITED}_stage_2.safetensors", f"site/assets/figures/{EDITED}.png"):
        assert (here / name).read_bytes() == (there / name).read_bytes(), name
    assert "Nothing to be done" in snakemake(here, "-n").stdout  # its metadata is Snakemake's own


@needs("jekyll")
@needs("chromium")
def test_edit_a_prompt_and_the_page_shows_the_new_figure(preview, browser):
    root = preview.root
    config = yaml.safe_load((root / "config.yaml").read_text())
    remade = {f"{name}.png" for name, (_, own) in post_config.figure_table(config).items()
              if name == EDITED or own.get("source") == EDITED}
    assert len(remade) == 2  # the hybrid and its stage II
    with browser.open(preview.url, timeout=120) as (page, _):
        before = images(page)
        assert remade < set(before)

        # 1. a prompt: the page reloads by itself, with the new caption and image, every other image unchanged
        mark(page)
        start = len(preview.lines)
        edited = edit_config(root, set_prompt(EDITED, 0, NEW_PROMPT))
        preview.wait_for(rf"^preview:\s+\d+ of \d+: {EDITED} \(sample_hybrids\)", start, TIMEOUT)
        wait_until(lambda: reloaded(page), TIMEOUT, "the page to reload")
        after = images(page)
        caption = page.evaluate(f"""() => document.querySelector('img[src$="/{EDITED}.png"]')
                                          .closest('p').nextElementSibling.textContent""")
        assert f"“{NEW_PROMPT}”" in caption
        assert {name for name in before if before[name] != after[name]} == remade
        assert set(after) == set(before)
        preview.wait_for(r"^preview: rebuilt in [\d.]+ s \(\d+ jobs\)", start)

        # 2. a bad edit: the last good page stays, with the check's line (escaped) in a banner, and in the terminal
        mark(page)
        start = len(preview.lines)
        edit_config(root, set_prompt(EDITED, 0, "<b>a photo</b>\tof a cat"))
        line = check_line(root)
        assert "<b>a photo</b>" in line and "U+0009 (tab)" in line
        wait_until(lambda: reloaded(page) and page.locator("#preview-banner").count() == 1, 120, "the banner")
        banner = page.locator("#preview-banner")
        assert banner.text_content() == line
        assert banner.evaluate("b => b.children.length") == 0  # text, not markup
        assert images(page) == after
        preview.wait_for(rf"^preview: error: {re.escape(line)}", start)
        published = site.built_post_path(root / "site" / "_site", next((root / "site" / "_posts").glob("*.md")).name)
        assert "preview-banner" not in published.read_text() and "EventSource" not in published.read_text()

        # 3. fixed: the banner goes
        mark(page)
        (root / "config.yaml").write_text(edited)
        wait_until(lambda: reloaded(page) and page.locator("#preview-banner").count() == 0, TIMEOUT, "the banner to go")
        assert images(page) == after


@needs("jekyll")
@needs("chromium")
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the preview's Snakemake in /proc")
def test_ctrl_c_stops_a_running_build(preview):
    """Ctrl-C while a figure samples (in the preview's own Snakemake, Resident): the job stops at its next step, no
    half-written file, exit 130 with one line, no process left behind; a plain `snakemake -n` afterwards plans the
    interrupted figure again (no lock, no incomplete error)."""
    root = preview.root
    start = len(preview.lines)
    edit_config(root, set_prompt("hybrid_skull_castle", 1, "a photo of a lighthouse"))
    preview.wait_for(r"^preview:\s+\d+ of \d+: hybrid_skull_castle \(sample_hybrids\)", start, TIMEOUT)
    assert children(preview.process.pid) == []  # the build runs inside the preview
    stopped = time.monotonic()
    preview.process.send_signal(signal.SIGINT)
    assert preview.process.wait(timeout=300) == 130
    assert time.monotonic() - stopped < 30  # not after the build: the job stopped at its next step
    preview.reader.join(timeout=30)
    assert preview.lines[-1].strip() == \
        "diffusion-post: interrupted (nothing half-written is left: every output is written atomically)"
    assert [str(p) for folder in ("figures", "results", "site") for p in (root / folder).rglob(".*tmp*")] == []
    assert "results/hybrid_skull_castle.safetensors" in snakemake(root, "-n").stdout
