"""Seconds from saving a one-prompt edit of config.yaml to the reloaded page, in `diffusion-post preview`.

On a copy of a built project (default: this repository once `make post` has built it), the preview runs on a free
port and headless Chromium (tests/browser.py) shows the post. Each round sets a marker on the page's `window`, saves
config.yaml with one prompt of FIGURE changed (two prompts alternate, so each save is a real change), and stops the
clock when the page has reloaded by itself and finished loading (images, MathJax, fonts: the reader's probe). It
prints each round with the build time the preview reported (its Snakemake run, the rest being the watcher's quiet
time, the reload and the page load), then the median.

    python bench/bench_preview.py [--project PATH] [--figure hybrid_gray_color] [--prompt 0] [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser  # noqa: E402
from live_preview import PreviewProcess, edit_config, loaded, mark, reloaded, set_prompt, wait_until  # noqa: E402

ALTERNATIVES = ("a photo of a cat", "a photo of a lighthouse")
NOT_COPIED = (".git", ".cache", "tests", "bench", "docs", "weights", ".pytest_cache", ".benchmarks", "locks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="a built project (default: this repository)")
    parser.add_argument("--figure", default="hybrid_gray_color")
    parser.add_argument("--prompt", type=int, default=0, help="which of the figure's prompts to change")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (args.project / "site" / "_site" / "index.html").is_file():
        sys.exit(f"bench_preview: {args.project} is not built: run `make post` there first")

    with tempfile.TemporaryDirectory(prefix="bench-preview-") as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(args.project, root, symlinks=True, ignore=shutil.ignore_patterns(*NOT_COPIED))
        edit_config(root, lambda config: config["backend"].update(  # the project's caches, shared, not copied
            cache_dir=str((args.project / config["backend"].get("cache_dir", ".cache")).resolve())))
        preview = PreviewProcess(root)
        try:
            with Browser() as browser, browser.open(preview.url, timeout=120) as (page, _):
                seconds, builds = [], []
                for k in range(args.rounds):
                    mark(page)
                    start = len(preview.lines)
                    prompt = ALTERNATIVES[k % 2]
                    edit = set_prompt(args.figure, args.prompt, prompt)
                    began = time.perf_counter()
                    edit_config(root, edit)
                    wait_until(lambda: reloaded(page), 1800, "the page to reload")
                    loaded(page)
                    seconds.append(time.perf_counter() - began)
                    built = preview.wait_for(r"^preview: rebuilt in ([\d.]+) s \((\d+) jobs\)", start)
                    builds.append(float(built[1]))
                    print(f"round {k + 1}: {args.figure} prompt {args.prompt} -> {prompt!r}: page reloaded "
                          f"{seconds[-1]:.1f} s after the save (Snakemake {built[1]} s, {built[2]} jobs)", flush=True)
        finally:
            preview.stop()
    print(f"median of {args.rounds}: {statistics.median(seconds):.1f} s from save to reloaded page "
          f"(Snakemake {statistics.median(builds):.1f} s)")


if __name__ == "__main__":
    main()
