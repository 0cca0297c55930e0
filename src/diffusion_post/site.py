"""The Jekyll site around the post: offline MathJax, the post's figures, `jekyll build`.

- `install_mathjax(site_dir)` copies the MathJax 4 files that `tex-chtml.js` loads, and its font, into
  `site/assets/mathjax/` (from `npm pack mathjax@4` and `@mathjax/mathjax-newcm-font`, cached), so the page
  needs no CDN.
- `publish(figure, copy)` copies one of the post's images to `site/assets/figures/` (each layout job publishes what
  it lays out: `figures/NAME/frame-K.png` -> `assets/figures/NAME/frame-K.png`); `remove_unpublished` removes from
  there the images the post no longer shows.
- `build_site(site_dir)` runs Debian's `jekyll build` (no Gemfile, no bundler); `baseurl` overrides the
  one of `site/_config.yml`, as `jekyll build --baseurl /REPO` does.
- `is_source(path)` / `source_files(site_dir)`: the site's own files (layouts, CSS, scripts, pages, `_config.yml`),
  not what the workflow and Jekyll write into it: the inputs of the `site` rule, and what `diffusion-post preview`
  watches.

The reader's checks (headless Chromium: images, equations, errors, sliders) are test helpers:
`tests/browser.py` and `tests/markdown_math.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

__all__ = ["SiteToolError", "install_mathjax", "publish", "remove_unpublished", "build_site", "built_post_path", "is_source",
           "source_files", "baseurl", "main"]


class SiteToolError(RuntimeError):
    """A tool the site needs (npm, jekyll, chromium) is missing or failed; the message is one line."""


def _require_tool(names: Sequence[str], hint: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise SiteToolError(f"{names[0]} not found on PATH: {hint}")


_APT_HINT = "run scripts/install_system_deps.sh (apt-get install jekyll)"


# --------------------------------------------------------------------------------------------
# MathJax, served from the site itself
# --------------------------------------------------------------------------------------------

MATHJAX_VERSION = "4"  # npm `mathjax@4`: its CommonHTML output breaks long display equations to fit the column
FONT_PACKAGE = "@mathjax/mathjax-newcm-font"  # MathJax 4's default font, in the version MathJax depends on

# Files of the npm packages that the page loads, and where they go under assets/mathjax/. MathJax finds its
# extensions, menu and speech files relative to its script ([mathjax]/...), and its font under [fonts], which the
# layout points at [mathjax]/fonts (by default MathJax 4 fetches fonts from a CDN).
_MATHJAX_FILES = {
    "mathjax": {
        "tex-chtml.js": "tex-chtml.js",  # TeX input + CommonHTML output + menu + explorer + the font's metrics
        "input/tex/extensions/": "input/tex/extensions/",  # autoloaded (\boldsymbol, \cancel, ...)
        "a11y/": "a11y/", "ui/": "ui/",  # loaded when a reader turns on a menu option
        "sre/speech-worker.js": "sre/speech-worker.js", "sre/mathmaps/": "sre/mathmaps/",  # speech, every language
        "LICENSE": "LICENSE",
    },
    FONT_PACKAGE: {
        "chtml/woff2/": "fonts/mathjax-newcm-font/chtml/woff2/",  # the glyphs, loaded by CSS at run time
        "chtml/dynamic/": "fonts/mathjax-newcm-font/chtml/dynamic/",  # metrics of rarer characters, loaded on demand
    },
}


def mathjax_stamp(version: str = MATHJAX_VERSION) -> str:
    """The file that records an installed MathJax, named by its version spec: the workflow's output, so that a site
    holding another version (whose files Snakemake has no record of) is installed again."""
    return f".installed-{version}.json"


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


def _npm_tarball(package: str, version: str, cache_dir: Path) -> Path:
    """The cached `npm pack <package>@<version>` tarball (version: exact, or a major like "4": its newest release),
    fetched with npm when not cached yet."""
    npm_dir = cache_dir / "npm"
    stem = package.lstrip("@").replace("/", "-")  # npm pack's file name: @scope/name -> scope-name-X.Y.Z.tgz
    pattern = f"{stem}-{version}.tgz" if version.count(".") == 2 else f"{stem}-{version}.*.tgz"
    cached = sorted(npm_dir.glob(pattern), key=_version_key)
    if cached:
        return cached[-1]
    npm = _require_tool(["npm"], "install Node.js/npm (scripts/install_system_deps.sh) to fetch MathJax")
    npm_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [npm, "pack", f"{package}@{version}", "--silent", "--pack-destination", str(npm_dir)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SiteToolError(f"npm pack {package}@{version} failed: {last}")
    name = proc.stdout.strip().splitlines()[-1].strip()
    tarball = npm_dir / name
    if not tarball.is_file():
        raise SiteToolError(f"npm pack {package}@{version} did not write {tarball}")
    return tarball


def _unpack(tarball: Path, files: dict[str, str], staging: Path) -> dict:
    """Copy `files` (package path or folder/ -> path under `staging`) out of an npm tarball; returns its package.json."""
    manifest: dict = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith("package/"):
                continue
            name = member.name[len("package/"):]
            if name == "package.json":
                manifest = json.load(tar.extractfile(member))
            for src, dst in files.items():
                if name == src or (src.endswith("/") and name.startswith(src)):
                    target = staging / (dst + name[len(src):])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    missing = [dst for dst in files.values() if not (staging / dst).exists()]
    if missing:
        raise SiteToolError(f"{tarball.name} lacks {', '.join(missing)}: not the package this site expects")
    return manifest


def install_mathjax(
    site_dir: str | os.PathLike,
    *,
    version: str = MATHJAX_VERSION,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Copy MathJax `version`'s tex-chtml component, with its font, into `site_dir/assets/mathjax/`; returns that
    folder.

    Idempotent: returns at once when the same version spec is installed. The npm tarballs (`mathjax`, and the font
    package in the version its package.json asks for) are cached under `cache_dir` (default `$DIFFUSION_POST_CACHE`
    or `~/.cache/diffusion_post`), so npm (and the registry) is needed only the first time. About 9 MB on disk,
    4 of them the speech rules of MathJax's menu in 16 languages.
    """
    dest = Path(site_dir) / "assets" / "mathjax"
    stamp = dest / mathjax_stamp(version)
    if not force and stamp.is_file():
        with contextlib.suppress(ValueError, OSError):
            info = json.loads(stamp.read_text())
            if info.get("spec") == version and all((dest / p).exists() for f in _MATHJAX_FILES.values() for p in f.values()):
                return dest
    cache = _cache_dir(cache_dir)
    tarball = _npm_tarball("mathjax", version, cache)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mathjax-", dir=dest.parent))
    try:
        manifest = _unpack(tarball, _MATHJAX_FILES["mathjax"], staging)
        font_version = manifest.get("dependencies", {}).get(FONT_PACKAGE, "").lstrip("^~=")  # "^4.1.3": 4.1.3
        if not font_version:
            raise SiteToolError(f"{tarball.name} names no {FONT_PACKAGE}: not a MathJax 4 package?")
        font = _npm_tarball(FONT_PACKAGE, font_version, cache)
        _unpack(font, _MATHJAX_FILES[FONT_PACKAGE], staging)
        (staging / mathjax_stamp(version)).write_text(json.dumps(
            {"spec": version, "version": manifest.get("version"), "tarball": tarball.name, "font": font.name}) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("MathJax %s installed in %s", manifest.get("version"), dest)
    return dest


# --------------------------------------------------------------------------------------------
# Jekyll
# --------------------------------------------------------------------------------------------

def build_site(
    site_dir: str | os.PathLike,
    dest: str | os.PathLike | None = None,
    *,
    baseurl: str | None = None,
    timeout: float = 600,
) -> Path:
    """Run `jekyll build` on `site_dir` into `dest` (default `site_dir/_site`); returns `dest`.

    `baseurl` (e.g. "/REPO" for https://USER.github.io/REPO/) overrides `baseurl` of `_config.yml`.

    Uses `--strict-front-matter`, so a post with broken YAML front matter fails the build instead
    of being copied raw. Jekyll's warnings are logged; a failure raises SiteToolError with the
    last line of Jekyll's output.
    """
    jekyll = _require_tool(["jekyll"], _APT_HINT)
    site = Path(site_dir).resolve()
    out = Path(dest).resolve() if dest is not None else site / "_site"
    env = dict(os.environ, JEKYLL_NO_BUNDLER_REQUIRE="true", JEKYLL_ENV=os.environ.get("JEKYLL_ENV", "production"))
    command = [jekyll, "build", "--source", str(site), "--destination", str(out), "--strict-front-matter"]
    if baseurl is not None:
        command += ["--baseurl", baseurl]
    proc = subprocess.run(  # in its own session: a terminal's Ctrl-C (for the build around it) lets it finish
        command,
        cwd=site, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True,
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


def publish(figure: str | os.PathLike, copy: str | os.PathLike) -> None:
    """Publish one of the post's images: `figure` (figures/X) copied to `copy` (site/assets/figures/X), atomically."""
    from .files import atomic_path

    with atomic_path(copy) as tmp:
        shutil.copyfile(figure, tmp)


def remove_unpublished(dest: str | os.PathLike, published: Sequence[str | os.PathLike]) -> None:
    """Make `dest` (site/assets/figures) hold only the files `published` (paths under it): remove the images of
    figures no longer in the post, and the folders left empty."""
    dest = Path(dest)
    wanted = {Path(f).resolve() for f in published}
    folders = {folder for f in wanted for folder in f.parents}
    for stale in sorted(dest.rglob("*"), reverse=True):  # children before their folders
        if stale.is_dir() and stale.resolve() not in folders:
            shutil.rmtree(stale)
        elif not stale.is_dir() and stale.resolve() not in wanted:
            stale.unlink()


# What the workflow and Jekyll write into the site folder (site/_site, the post, the published figures, MathJax).
GENERATED = (("_site",), ("_posts",), ("assets", "figures"), ("assets", "mathjax"))


def is_source(path: str | os.PathLike) -> bool:
    """Whether the file at `path` (relative to the site folder) is one of the site's own sources: anything but
    what the build writes there (GENERATED) and hidden files (.jekyll-cache, editors' swap files)."""
    parts = Path(path).parts
    return not any(part.startswith(".") for part in parts) and not any(parts[:len(g)] == g for g in GENERATED)


def source_files(site_dir: str | os.PathLike) -> list[str]:
    """Every source file of the site in `site_dir` (is_source), sorted; the paths start with `site_dir`."""
    site_dir = Path(site_dir)
    found = []
    for folder, subfolders, files in os.walk(site_dir):
        rel = Path(folder).relative_to(site_dir)
        subfolders[:] = sorted(d for d in subfolders if is_source(rel / d))  # never walks into _site
        found += [str(Path(folder) / f) for f in files if is_source(rel / f)]
    return sorted(found)


def baseurl(site_dir: str | os.PathLike) -> str:
    """The `baseurl` of `site_dir/_config.yml` as a URL path prefix: "" (the server's root) or "/REPO"."""
    import yaml

    try:
        value = (yaml.safe_load((Path(site_dir) / "_config.yml").read_text(encoding="utf-8")) or {}).get("baseurl")
    except (OSError, yaml.YAMLError, AttributeError):
        return ""
    value = str(value or "").strip("/")
    return f"/{value}" if value else ""


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
# Command line: python -m diffusion_post.site {mathjax,build} ...
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Small CLI around the functions above."""
    parser = argparse.ArgumentParser(prog="python -m diffusion_post.site", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mathjax", help="install MathJax into SITE/assets/mathjax")
    p.add_argument("site", nargs="?", default="site")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("build", help="install MathJax, then jekyll build")
    p.add_argument("site", nargs="?", default="site")
    p.add_argument("--dest")
    p.add_argument("--baseurl", help="where the site is served, e.g. /REPO (default: baseurl of _config.yml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "mathjax":
            print(install_mathjax(args.site, force=args.force))
        else:
            install_mathjax(args.site)
            print(build_site(args.site, args.dest, baseurl=args.baseurl))
    except SiteToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
