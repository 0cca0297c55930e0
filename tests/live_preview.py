"""`diffusion-post preview` driven from outside, as a writer uses it: the process and its output, config edits, and
what the open page shows. Shared by tests/test_preview.py and bench/bench_preview.py."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import yaml
from browser import PAGE_PROBE
from conftest import wait_until

from diffusion_post import site


def edit_config(root: Path, edit) -> str:
    """Apply `edit` to the parsed config.yaml of `root` and save it; returns the text written."""
    config = yaml.safe_load((root / "config.yaml").read_text())
    edit(config)
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    (root / "config.yaml").write_text(text)
    return text


def set_prompt(figure: str, k: int, prompt: str):
    """An edit for edit_config: prompt `k` of `figure` (its `prompts`, or its one `prompt`) becomes `prompt`."""
    def edit(config):
        own = next(figures[figure] for figures in config["figures"].values() if figure in figures)
        if "prompts" in own:
            own["prompts"][k] = prompt
        else:
            own["prompt"] = prompt
    return edit


class PreviewProcess:
    """`python -m diffusion_post.cli preview --port 0` in the built project `root`, its output collected line by
    line; `url` is the post's page once the preview has brought the post up to date."""

    def __init__(self, root: Path, timeout: float = 900):
        self.root = root
        self.lines: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-m", "diffusion_post.cli", "preview", "--port", "0"], cwd=root,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()
        base = self.wait_for(r"serving (http://127\.0\.0\.1:\d+)/", timeout=timeout).group(1)
        self.wait_for(r"^preview: (up to date|rebuilt)", timeout=timeout)
        dest = root / "site" / "_site"
        post = site.built_post_path(dest, next((root / "site" / "_posts").glob("*.md")).name)
        self.url = f"{base}/{post.relative_to(dest).as_posix()}"

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 900) -> re.Match:
        """The first line from line `start` on that matches `pattern`."""
        def found():
            if self.process.poll() is not None and not self.reader.is_alive():
                raise AssertionError("the preview stopped:\n" + "".join(self.lines[-40:]))
            return next((m for line in self.lines[start:] if (m := re.search(pattern, line))), None)
        return wait_until(found, timeout, f"{pattern!r} in the preview's output")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def mark(page) -> None:
    """Set a marker on the page's window: gone once the page has reloaded."""
    page.evaluate("() => { window.previewMarker = 1; }")


def reloaded(page) -> bool:
    with contextlib.suppress(Exception):  # "execution context was destroyed": the page is reloading
        return page.evaluate("() => window.previewMarker === undefined")
    return False


def loaded(page, timeout: float = 120) -> dict:
    """What the reader's probe reports once the page has loaded (MathJax, images, fonts); waits through a reload."""
    def probe():
        with contextlib.suppress(Exception):
            page.wait_for_load_state("load")
            return page.evaluate(PAGE_PROBE)
    return wait_until(probe, timeout, "the page to load")


def images(page) -> dict[str, bytes]:
    """Every figure the loaded page shows, as served: {path under assets/figures: bytes}."""
    values = loaded(page)
    assert values["broken_images"] == [], values["broken_images"]
    found = {}
    for url in set(values["image_urls"]):
        with urllib.request.urlopen(url) as response:
            found[url.rsplit("/assets/figures/", 1)[1]] = response.read()
    return found
