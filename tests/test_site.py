"""The site tools and the reader's checks themselves: fixture posts built by Jekyll, opened in headless Chromium
(tests/browser.py), compared with their markdown (tests/markdown_math.py). The real post: test_reader.py.

Tests that need jekyll, chromium or npm skip when the tool is missing, except under CI=true,
where they run (and fail) so that a missing install step cannot pass unnoticed.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from browser import MathSpan, check_page, page_url, serve_directory
from conftest import needs
from markdown_math import EquationCount, count_equations, extract_math, lint_math, math_mismatches, protect_inline_math
from PIL import Image

from diffusion_post import site as site_mod
from diffusion_post.site import build_site, built_post_path, install_mathjax, remove_unpublished

SITE = Path(__file__).resolve().parents[1] / "site"


def _mathjax_fetchable() -> bool:
    cached = list((site_mod._cache_dir(None) / "npm").glob(f"mathjax-{site_mod.MATHJAX_VERSION}.*.tgz"))
    return bool(cached) or (SITE / "assets/mathjax/tex-chtml.js").is_file() or shutil.which("npm") is not None


needs_site_tools = [needs("jekyll"), needs("chromium"), needs("npm", _mathjax_fetchable())]

# Written the way a generator might: single-dollar math with the usual traps (`\bar{\alpha}_t`
# twice in a paragraph -> emphasis, `\{` -> escape eaten, `|` on a paragraph's first line -> table,
# `{{` -> Liquid). The post on the site is this after protect_inline_math.
FIXTURE = r"""---
layout: post
title: "Fixture: equations and figures"
published: true
tags: [test, diffusion]
require-mathjax: true
---

The forward process noises $x_0$ at a timestep $t \in \{1, \dots, T\}$ with $\bar{\alpha}_t = \prod_{s=1}^{t} \alpha_s$ and $\epsilon \sim \mathcal{N}(0, \mathbf{I})$:

$$
x_t = \sqrt{\bar{\alpha}_t}\, x_0 + \sqrt{1 - \bar{\alpha}_t}\, \epsilon, \qquad \sigma_{{t}}^2 = \frac{1 - \bar{\alpha}_{t-1}}{1 - \bar{\alpha}_t} \beta_t
$$

![Noised at t = 250, 500, 750](/assets/figures/strip.png)
*Noised at t = 250, 500, 750.*

$|x_0 - \hat{x}_0|$ is the error of the one-step estimate $$\hat{x}_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}}$$, small for small $t$.

$$
\hat\epsilon = \epsilon_u + \gamma\,(\epsilon_c - \epsilon_u), \quad \boldsymbol{x} \in [-1, 1]^{3 \times 64 \times 64}
$$

![A 64 px sample](/assets/figures/sample.png)

Code is not math: `$x$` and

```python
cost = "$5"  # $x_t$
```
"""


# What the checks must catch: a missing figure, a script error, TeX errors, a box wider than the window, an
# equation that cannot break into lines (a matrix) wider than the column.
BROKEN = r"""---
title: Broken
require-mathjax: true
---

![missing](/assets/figures/missing.png)

An unknown macro $$\epsilonn_t$$ and a missing argument $$\frac{a}$$.

$$
\begin{matrix} """ + " & ".join(str(k) for k in range(100, 180)) + r""" \end{matrix}
$$

<script>throw new Error("boom");</script>

<div class="too-wide" style="width: 3000px">A box wider than any window.</div>
"""


def _png(path: Path, size: tuple[int, int], seed: int) -> None:
    img = Image.new("RGB", size)
    img.putdata([((x * 7 + seed) % 256, (y * 5) % 256, (x * y + seed) % 256)
                 for y in range(size[1]) for x in range(size[0])])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ------------------------------------------------------------------ markdown only (always run)

def test_count_equations_follows_kramdown_blocks():
    md = "\n".join([
        "---", "title: $not math$", "---", "",
        "$$", "x_t = a", "$$", "",          # display: alone in its block
        "$$c$$", "",                        # display: one line, alone
        "Text $$a$$ and $$b$$ and $y$.", "",  # 3 inline
        "Para", "$$", "d", "$$", "",        # no blank line before: inline in the paragraph
        "`$$code$$` and", "```", "$$e$$ $f$", "```", "",  # code is not math
        "<!-- $$g$$ -->", "",
    ])
    assert count_equations(md) == EquationCount(display=2, inline=4)
    assert [s.tex for s in extract_math(md)] == ["x_t = a", "c", "a", "b", "y", "d"]
    assert extract_math(md)[0].line == 5


def test_single_dollar_follows_mathjax_braces():
    md = r"Set $\{ a \$ b \}$ and ${x}_{\$}$, not \$5."
    assert [s.tex for s in extract_math(md)] == [r"\{ a \$ b \}", r"{x}_{\$}"]


def test_protect_inline_math_makes_kramdown_math_spans():
    md = "Error $|x - y|$ and $\\bar{\\alpha}_t$, norm $$\\|x\\|$$, `$code$`.\n\n$$\na | b\n$$\n"
    out = protect_inline_math(md)
    assert out == ("Error $$\\vert x - y\\vert $$ and $$\\bar{\\alpha}_t$$, norm $$\\|x\\|$$, `$code$`."
                   "\n\n$$\na | b\n$$\n")
    assert protect_inline_math(out) == out
    assert count_equations(out) == count_equations(md)
    assert lint_math(out) == []
    assert len(lint_math(md)) == 2  # the '|' and the single-dollar \bar{\alpha}_t


def test_math_mismatches_lists_both_sides():
    expected = [MathSpan("a", False), MathSpan(r"\{1\}", False)]
    assert math_mismatches(expected, [MathSpan(" a ", False), MathSpan(r"\{1\}", False)]) == []
    assert math_mismatches(expected, [MathSpan("a", False), MathSpan("{1}", False)]) == [
        r"in markdown, not typeset: inline \{1\}", "typeset, not in markdown: inline {1}"]


# ------------------------------------------------------------------ the built site in a browser

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of site/ with MathJax, two PNGs, the fixture post (protected) and the raw fixture."""
    root = tmp_path_factory.mktemp("site")
    src = root / "src"
    shutil.copytree(SITE, src, ignore=shutil.ignore_patterns("_site", ".jekyll-cache", "_posts", "figures"))
    install_mathjax(src)
    _png(src / "assets/figures/strip.png", (192, 64), 0)
    _png(src / "assets/figures/sample.png", (64, 64), 99)
    posts = src / "_posts"
    posts.mkdir()
    safe = protect_inline_math(FIXTURE)
    (posts / "2024-05-01-implementing-diffusion-models.md").write_text(safe)
    (posts / "2024-04-01-raw-fixture.md").write_text(FIXTURE.replace("Fixture:", "Raw fixture:"))
    (posts / "2024-03-01-broken.md").write_text(BROKEN)
    start = time.monotonic()
    dest = build_site(src, root / "_site")
    build_s = time.monotonic() - start
    return {"src": src, "dest": dest, "markdown": safe, "build_s": build_s}


@pytest.fixture(scope="module")
def reports(built, browser):
    dest = built["dest"]
    pages = {
        "post": built_post_path(dest, "2024-05-01-implementing-diffusion-models.md"),
        "raw": built_post_path(dest, "2024-04-01-raw-fixture.md"),
        "broken": built_post_path(dest, "2024-03-01-broken.md"),
        "index": dest / "index.html",
    }
    with serve_directory(dest) as base:
        return {name: browser.check(page_url(base, dest, path)) for name, path in pages.items()}


def _site_test(fn):
    for mark in needs_site_tools:
        fn = mark(fn)
    return fn


@_site_test
def test_every_image_loads(reports):
    post = reports["post"]
    assert post.images == 2
    assert post.images_loaded == post.images, post.broken_images


@_site_test
def test_every_equation_is_typeset_from_its_source(built, reports):
    post, expected = reports["post"], count_equations(built["markdown"])
    assert expected.display == 2 and expected.inline == 7
    assert post.mathjax_version and post.mathjax_version.startswith(f"{site_mod.MATHJAX_VERSION}.")
    assert (post.math, post.math_display) == (expected.total, expected.display)
    assert math_mismatches(extract_math(built["markdown"]), post.math_spans) == []
    assert post.math_errors == []


@_site_test
def test_no_errors_and_nothing_from_outside(reports):
    for name in ("post", "index"):
        report = reports[name]
        assert report.js_errors == [], name
        assert report.failed_requests == [], name
        assert report.external_requests == [], name
        assert report.requests >= 1 + report.images, name  # the page itself and its images at least were seen
        assert report.ok, name


@_site_test
def test_the_check_catches_kramdown_mangling_single_dollar_math(reports):
    raw = reports["raw"]
    assert math_mismatches(extract_math(FIXTURE), raw.math_spans) != []
    assert not reports["index"].mathjax_expected and reports["index"].math == 0


@_site_test
def test_the_check_catches_broken_figures_scripts_and_tex(reports):
    broken = reports["broken"]
    assert (broken.images, broken.images_loaded) == (1, 0)
    assert broken.broken_images == ["/assets/figures/missing.png"]
    assert any("missing.png (404)" in r for r in broken.failed_requests)
    assert any("boom" in e for e in broken.js_errors)
    assert len(broken.math_errors) == 2 and "epsilonn" in broken.math_errors[0]
    assert broken.overflows and [e.split(" (")[0] for e in broken.wide_elements] == ["div.too-wide"]
    assert [tex.split()[:2] for tex in broken.wide_math] == [[r"\begin{matrix}", "100"]]  # scrolls in its box
    assert not broken.ok


@_site_test
def test_check_page_serves_a_built_file_and_takes_a_screenshot(built, tmp_path):
    page = built_post_path(built["dest"], "2024-05-01-implementing-diffusion-models.md")
    report = check_page(page, screenshot=tmp_path / "post.png")
    assert report.ok and report.math == count_equations(built["markdown"]).total
    with Image.open(tmp_path / "post.png") as shot:
        assert shot.width == 1000 and shot.height > 800  # the full page, not just the window


@_site_test
def test_index_lists_the_post(built):
    index = (built["dest"] / "index.html").read_text()
    assert 'href="/2024/05/01/implementing-diffusion-models.html"' in index
    assert "Fixture: equations and figures" in index
    assert built["build_s"] < 20


@needs("npm", _mathjax_fetchable())
def test_install_mathjax_is_small_and_idempotent(tmp_path):
    dest = install_mathjax(tmp_path)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    assert (dest / "tex-chtml.js").is_file() and (dest / "sre/mathmaps/en.json").is_file()
    assert len(list((dest / "fonts/mathjax-newcm-font/chtml/woff2").glob("*.woff2"))) > 50  # the font, not a CDN's
    assert size < 10_000_000
    stamp = (dest / site_mod.mathjax_stamp()).stat().st_mtime_ns
    start = time.monotonic()
    assert install_mathjax(tmp_path) == dest
    assert time.monotonic() - start < 0.5
    assert (dest / site_mod.mathjax_stamp()).stat().st_mtime_ns == stamp


def test_publish_copies_a_figure_and_remove_unpublished_drops_what_the_post_no_longer_shows(tmp_path):
    figures, dest = tmp_path / "figures", tmp_path / "assets"
    for name, value in (("forward.png", 0), ("forward/frame-0.png", 1), ("old/frame-0.png", 2)):
        _png(figures / name, (4, 4), value)
        site_mod.publish(figures / name, dest / name)
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*.png")} == {"forward.png", "forward/frame-0.png", "old/frame-0.png"}
    _png(figures / "forward/frame-0.png", (4, 4), 3)  # changed: published again
    site_mod.publish(figures / "forward/frame-0.png", dest / "forward/frame-0.png")
    (dest / ".hidden-by-an-editor").write_text("")
    remove_unpublished(dest, [dest / "forward.png", dest / "forward/frame-0.png"])
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*")} == {"forward.png", "forward", "forward/frame-0.png"}
    assert (dest / "forward/frame-0.png").read_bytes() == (figures / "forward/frame-0.png").read_bytes()


def test_serve_directory_under_a_base_url_serves_nothing_outside_it(tmp_path):
    import urllib.error
    import urllib.request

    (tmp_path / "assets").mkdir()
    (tmp_path / "assets/a.txt").write_text("a")
    with serve_directory(tmp_path, prefix="/REPO/") as base:
        assert base.endswith("/REPO")
        assert urllib.request.urlopen(f"{base}/assets/a.txt").read() == b"a"
        root = base[: -len("/REPO")]
        for url in (f"{root}/assets/a.txt", f"{root}/REPOassets/a.txt"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(url)
