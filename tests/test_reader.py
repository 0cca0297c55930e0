"""The built post as a reader gets it: served on localhost at the root and under a base URL (a GitHub Pages
project site), opened in headless Chromium (one browser for the session, the project built once: conftest.py).
Every image loads, MathJax typesets every equation of the markdown, nothing leaves localhost, every slider moves
with the keyboard to the frame the workflow wrote for it, the anagram buttons turn to the other view, and the
page fits a phone, its long equations broken into lines."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from browser import page_url, serve_directory
from conftest import needs, snakemake
from markdown_math import count_equations, extract_math, math_mismatches
from PIL import Image

from diffusion_post import config as post_config
from diffusion_post import site
from diffusion_post.layout import GAP

pytestmark = [needs("jekyll"), needs("chromium")]


def post_markdown(root: Path) -> Path:
    (post,) = (root / "site" / "_posts").glob("*-implementing-diffusion-models.md")
    return post


def post_html(root: Path) -> Path:
    return site.built_post_path(root / "site" / "_site", post_markdown(root).name)


@pytest.fixture(scope="module")
def config(build) -> dict:
    return yaml.safe_load((build / "config.yaml").read_text())


@pytest.fixture(scope="module")
def served(build):
    """The built site at the root of a localhost server: the post's URL."""
    with serve_directory(build / "site" / "_site") as base:
        yield page_url(base, build / "site" / "_site", post_html(build))


@pytest.fixture(scope="module")
def under_base_url(build, tmp_path_factory) -> Path:
    """The same project with `baseurl: /REPO` in site/_config.yml, rebuilt (only the site reruns)."""
    root = tmp_path_factory.mktemp("baseurl") / "project"
    shutil.copytree(build, root, symlinks=True)
    site_config = root / "site" / "_config.yml"
    site_config.write_text(re.sub(r'(?m)^baseurl: ""', 'baseurl: "/REPO"', site_config.read_text()))
    assert 'baseurl: "/REPO"' in site_config.read_text()
    rerun = re.findall(r"^\s+output: (.+)$", snakemake(root, "-n").stdout, re.M)
    (site_job,) = rerun  # not the figures, not the post: the site job alone
    assert site_job == "site/_site/index.html", site_job
    snakemake(root, "--cores", "1")
    return root


def assert_reads_well(report, markdown: str, config: dict) -> None:
    expected = count_equations(markdown)
    assert report.problems() == []
    assert report.images == report.images_loaded >= len(post_config.figure_files(config))
    assert report.stylesheets >= 1 and report.mathjax_version.startswith(f"{site.MATHJAX_VERSION}.")
    assert (report.math, report.math_display) == (expected.total, expected.display) and expected.total > 20
    assert math_mismatches(extract_math(markdown), report.math_spans) == []
    frames = post_config.figure_frames(config)
    specs = {name: post_config.resolve(config, name) for name in frames}
    toggles = sum(spec["technique"] == "anagram" or spec.get("source_technique") == "anagram" for spec in specs.values())
    assert (report.sliders, report.toggles) == (len(frames) - toggles, toggles)


def test_post_at_the_root(browser, served, build, config):
    report = browser.check(served)
    assert_reads_well(report, post_markdown(build).read_text(), config)
    # every frame of every interactive figure is on the page (the first as the current frame, the rest linked)
    assert all(re.match(r"^http://127\.0\.0\.1:\d+/assets/", u) for u in report.image_urls)


def test_post_under_a_base_url(browser, under_base_url, config):
    dest = under_base_url / "site" / "_site"
    html = post_html(under_base_url).read_text()
    assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', html) == ["/REPO/assets/css/style.css"]
    assert '<script id="MathJax-script" async src="/REPO/assets/mathjax/tex-chtml.js">' in html
    assert 'src="/REPO/assets/js/figures.js"' in html
    with serve_directory(dest, prefix="/REPO") as base:
        assert base.endswith("/REPO")
        report = browser.check(page_url(base, dest, post_html(under_base_url)))
        index = browser.check(f"{base}/")
    assert_reads_well(report, post_markdown(under_base_url).read_text(), config)
    assert all("/REPO/assets/" in u for u in report.image_urls)
    assert index.problems() == [] and index.stylesheets >= 1
    assert "/REPO/2026/" in (dest / "index.html").read_text()


def test_the_root_build_does_not_pass_under_a_base_url(browser, build):
    """The check can fail: the root build served under /REPO/ loses its style sheet and MathJax."""
    dest = build / "site" / "_site"
    with serve_directory(dest, prefix="/REPO") as base:
        report = browser.check(page_url(base, dest, post_html(build)))
    assert any("/assets/css/style.css (404)" in r for r in report.failed_requests)
    assert report.mathjax_version is None and not report.ok


def _widgets(page) -> list[tuple[str, object]]:
    """(figure name, its .interactive box) in page order; the name comes from the strip above the box."""
    boxes = page.locator(".interactive")
    out = []
    for k in range(boxes.count()):
        box = boxes.nth(k)
        src = box.evaluate("b => b.previousElementSibling.querySelector('img[data-frames]').getAttribute('src')")
        out.append((Path(src).stem, box))
    return out


def _shown(box) -> tuple[str, int, str]:
    """The current frame's URL and natural width once decoded, and the value the control shows."""
    src, width = box.locator("img.frame").evaluate("img => img.decode().then(() => [img.src, img.naturalWidth])")
    return src, width, box.locator("output").inner_text()


def test_sliders_move_with_the_keyboard_through_the_workflows_frames(browser, served, config):
    frames = post_config.figure_frames(config)
    specs = {name: post_config.resolve(config, name) for name in post_config.figure_table(config)}
    seen = set()
    with browser.open(served) as (page, report):
        for name, box in _widgets(page):
            spec = specs[name]
            if box.locator("input[type=range]").count() == 0:
                continue
            slider = box.locator("input[type=range]")
            values = post_config.frame_values(spec, specs)
            slider.focus()
            for k, value in enumerate(values):
                if k:
                    page.keyboard.press("ArrowRight")
                src, width, label = _shown(box)
                assert src.endswith(f"/assets/figures/{name}/frame-{k}.png"), (name, k, src)
                assert width > 0
                if spec["technique"] == "sdedit":
                    assert label == ("the original" if value is None else f"i_start = {value} (t = {post_config.timesteps(spec)[value]})")
                else:
                    assert label == ("t = 0 (the original)" if value == 0 else f"t = {value}"), (name, label)
                assert slider.get_attribute("aria-valuetext") == label
            page.keyboard.press("Home")
            assert _shown(box)[0].endswith(f"/{name}/frame-0.png")
            page.keyboard.press("End")
            assert _shown(box)[0].endswith(f"/{name}/frame-{len(values) - 1}.png")
            seen.add(name)
        assert report.js_errors == [] and report.failed_requests == []
    sliders = {n for n in frames if specs[n]["technique"] in ("forward", "one_step", "iterative", "sdedit")}
    assert seen == sliders and len(seen) >= 12


def test_anagram_button_turns_to_the_other_views(browser, served, config):
    frames = post_config.figure_frames(config)
    specs = {name: post_config.resolve(config, name) for name in post_config.figure_table(config)}
    words = {"identity": "as sampled", "flip": "upside down", "rotate_cw": "rotated 90° clockwise",
             "rotate_ccw": "rotated 90° counterclockwise"}
    seen = set()
    with browser.open(served) as (page, report):
        for name, box in _widgets(page):
            button = box.locator("button")
            if button.count() == 0:
                continue
            views = specs[name]["views"]
            assert _shown(box)[0].endswith(f"/{name}/frame-0.png") and _shown(box)[2] == words[views[0]]
            button.focus()
            for k in [*range(1, len(views)), 0]:  # Enter and Space both turn it; the last press comes back
                page.keyboard.press("Enter" if k % 2 else "Space")
                src, width, label = _shown(box)
                assert src.endswith(f"/{name}/frame-{k}.png") and width > 0, (name, k, src)
                assert label == words[views[k]]
            seen.add(name)
        assert report.js_errors == []
    assert seen == {n for n in frames if "views" in specs[n]} and len(seen) >= 4


def _tiles(path: Path, size: int) -> list[np.ndarray]:
    strip = np.asarray(Image.open(path).convert("RGB"))
    return [strip[:, x:x + size] for x in range(0, strip.shape[1], size + GAP)]


def test_frames_are_the_tiles_of_their_figure_and_the_views_are_exact(build, config):
    """What a slider shows is what the strip shows; an anagram's second frame is its first, turned."""
    turn = {"flip": np.flipud, "rotate_cw": lambda a: np.rot90(a, -1), "rotate_ccw": np.rot90}
    for name, files in post_config.figure_frames(config).items():
        spec = post_config.resolve(config, name)
        frames = [np.asarray(Image.open(build / f).convert("RGB")) for f in files]
        size = frames[0].shape[0]
        tiles = _tiles(build / "figures" / f"{name}.png", size)
        assert len(tiles) == len(frames) * (spec["count"] if "views" in spec else 1)
        assert "views" not in spec or spec["count"] == 1  # the shipped anagrams: one sample, frame k is tile k
        for k, (tile, frame) in enumerate(zip(tiles, frames)):
            assert np.array_equal(tile, frame), (name, k)
        for view, frame in zip(spec.get("views", [])[1:], frames[1:]):
            assert np.array_equal(frame, turn[view](frames[0])), (name, view)


@pytest.mark.parametrize("width", [1200, 390])
def test_the_page_fits_the_screen(browser, served, build, width, tmp_path):
    """Desktop and phone widths: nothing wider than the window (the wide table scrolls inside the column), every
    equation typeset and none wider than the column (MathJax 4 breaks long ones into lines), the controls inside
    the window and big enough to use. Screenshots of both were looked at."""
    shot = tmp_path / f"post-{width}.png"
    report = browser.check(served, width=width, screenshot=shot)
    assert report.page_width == report.viewport_width == width, report.wide_elements[:5]
    assert report.wide_elements == []
    assert report.math == count_equations(post_markdown(build).read_text()).total and report.math_errors == []
    assert report.wide_math == []
    with Image.open(shot) as image:
        assert image.width == width and image.height > 10 * width
    with browser.open(served, width=width) as (page, _):
        for control in page.locator(".interactive input, .interactive button").all():
            box = control.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["height"] >= 24
            assert box["width"] >= (150 if control.get_attribute("type") == "range" else 60)
        figure = page.locator(".interactive img.frame").first.bounding_box()
        assert figure["width"] >= min(256, width - 40)  # a 64-px frame is shown at least 4x: pixels, not blur
        rendering = page.locator(".interactive img.frame").first.evaluate("i => getComputedStyle(i).imageRendering")
        assert rendering == "pixelated"


def test_how_each_figure_was_made_opens_without_javascript_and_fits_a_phone(browser, served, config):
    """With the page's scripts off (no figure script, no MathJax), every figure has its collapsed "How this figure
    was made"; a click opens it, and all of them open, the page is still no wider than a phone."""
    with browser.open(served, width=390, javascript=False) as (page, report):
        assert report.mathjax_version is None and report.sliders == 0  # the scripts did not run
        boxes = page.locator("details.provenance")
        assert boxes.count() == len(post_config.figure_files(config))
        for k in range(boxes.count()):
            box = boxes.nth(k)
            assert box.locator("summary").inner_text() == "How this figure was made"
            assert not box.locator("dl").is_visible()
            box.locator("summary").click()
            assert box.locator("dt").first.is_visible() and box.locator("dd").last.inner_text().startswith("snakemake --cores 1 figures/")
        assert page.evaluate("() => document.documentElement.scrollWidth") == 390
        assert page.locator("details.provenance[open]").count() == boxes.count()
