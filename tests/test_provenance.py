"""Provenance without a build: the code version and environment a figure records, the comparison `verify` makes,
and the rule graph in the README. On the real build: test_workflow.py (disclosures, verify end to end)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffusion_post import __version__, provenance
from diffusion_post.cli import main
from diffusion_post.png import save_png
from diffusion_post.project import WORKFLOW, copy_project, rule_names, rulegraph, snakemake_output
from diffusion_post.verify import CANNOT_COMPARE, DIFFERS, IDENTICAL, Row, compare, table

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


in_checkout = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                 reason="the project is not a git checkout here")


@in_checkout
def test_code_version_is_the_commit_of_the_packages_checkout():
    code = provenance.code_version()
    assert code == {"version": __version__, "commit": git("rev-parse", "HEAD"),
                    "dirty": bool(git("status", "--porcelain", "--", "src/diffusion_post"))}


@in_checkout
def test_uncommitted_means_the_packages_source_changed(tmp_path):
    """In a clone: clean; an edited README or a new file outside src/diffusion_post does not count; an edited or a new
    module does."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    package = clone / "src" / "diffusion_post"
    version = provenance.code_version.__wrapped__  # not the answer cached for this process's own package
    assert version(package) == {"version": __version__, "commit": git("rev-parse", "HEAD"), "dirty": False}
    (clone / "README.md").write_text("edited\n")
    (clone / "notes.txt").write_text("new\n")
    assert version(package)["dirty"] is False
    (package / "new_module.py").write_text("")
    assert version(package)["dirty"] is True
    (package / "new_module.py").unlink()
    with open(package / "post.py", "a") as f:
        f.write("# edited\n")
    assert version(package)["dirty"] is True


@in_checkout
def test_code_version_is_found_from_the_package_not_the_working_folder(tmp_path):
    """A build runs in a copy of the project whose src/ is a link (copy_project), from any working folder."""
    copy_project(ROOT, tmp_path / "copy", ROOT / ".cache", parts=WORKFLOW)
    script = "import json; from diffusion_post import provenance; print(json.dumps(provenance.code_version()))"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "copy" / "src")})
    assert json.loads(run.stdout) == provenance.code_version()
    outside = tmp_path / "unpacked" / "diffusion_post"  # the package outside any checkout (as from a wheel)
    shutil.copytree(ROOT / "src" / "diffusion_post", outside, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", str(tmp_path / "unpacked")], check=True)  # inside another repository, even
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(outside.parent)})
    assert json.loads(run.stdout) == {"version": __version__, "commit": None, "dirty": None}


def test_environment_is_what_the_bits_depend_on():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # not this machine's default: the record must read the thread count in force
        environment = provenance.environment()
        assert environment["torch_threads"] == 3
        assert provenance.environment() == environment  # deterministic: it goes into the figure's bytes
    finally:
        torch.set_num_threads(before)
    assert torch.__version__.startswith(environment["libraries"]["torch"])
    assert {"python", "numpy", "pillow", "safetensors"} <= set(environment["libraries"])
    assert environment["device"] == "cpu" and environment["processor"]


def test_seconds_sidecar(tmp_path):
    result = tmp_path / "results" / "forward.safetensors"
    path = provenance.seconds_path(result)
    assert path == tmp_path / "results" / "forward.seconds.json"
    provenance.write_seconds(path, 12.3456, 10.0)
    assert provenance.read_seconds(path) == {"seconds": 12.35, "loading": 10.0}
    assert [p.name for p in path.parent.iterdir()] == ["forward.seconds.json"]  # nothing else left


# --- verify's comparison, on files made here -------------------------------------------------------------------------

RECORD = {"figure": "forward", "technique": "forward", "seed": 100, "code": {"version": __version__, "commit": "a" * 40,
          "dirty": False}, "environment": {"libraries": {"python": "3.11.7", "torch": "2.13.0"}, "torch_threads": 2,
                                           "processor": "Some CPU (x86_64)", "device": "cpu"}}
FILES = ["figures/forward.png", "figures/forward/frame-0.png"]


def publish(folder: Path, record: dict, pixel: tuple[int, int, int] = (0, 0, 0)) -> None:
    """A figure and one frame, as the workflow lays them out: the same record in both."""
    for file in FILES:
        image = Image.new("RGB", (8, 4), "white")
        image.putpixel((3, 2), pixel)
        save_png(image, folder / file, {**record, "panel": "images"})


@pytest.fixture
def rebuilt(tmp_path) -> Path:
    publish(tmp_path / "rebuilt", RECORD)
    return tmp_path / "rebuilt"


def published(tmp_path: Path, record: dict = RECORD, pixel=(0, 0, 0)) -> Path:
    publish(tmp_path / "site", record, pixel)
    return tmp_path / "site" / "figures"


def test_same_bytes_are_identical(tmp_path, rebuilt):
    assert compare("forward", FILES, published(tmp_path), rebuilt) == Row("forward", IDENTICAL, "2 files, the same bytes")


def test_one_pixel_with_the_same_record_is_unexplained(tmp_path, rebuilt):
    row = compare("forward", FILES, published(tmp_path, pixel=(0, 0, 1)), rebuilt)
    assert row == Row("forward", DIFFERS, "forward.png and 1 more: other pixels; nothing recorded explains it")


@pytest.mark.parametrize("part, change, words", [
    ("torch threads", lambda r: r["environment"].update(torch_threads=1), "torch threads (1 -> 2)"),
    ("library versions", lambda r: r["environment"]["libraries"].update(torch="2.12.0"),
     'library versions (torch "2.12.0" -> "2.13.0")'),
    ("processor", lambda r: r["environment"].update(processor="Other CPU (aarch64)"),
     'processor (processor "Other CPU (aarch64)" -> "Some CPU (x86_64)")'),
    ("code version", lambda r: r["code"].update(commit="b" * 40, dirty=True),
     f"code version (commit {'b' * 12} -> {'a' * 12}, dirty true -> false)"),
    ("parameters", lambda r: r.update(seed=7), "parameters (seed 7 -> 100)"),
])
def test_a_recorded_difference_is_named(tmp_path, rebuilt, part, change, words):
    record = json.loads(json.dumps(RECORD))
    change(record)
    row = compare("forward", FILES, published(tmp_path, record), rebuilt)
    assert row == Row("forward", DIFFERS, f"forward.png and 1 more: the same pixels; the records differ in {words}")


def test_what_cannot_be_compared(tmp_path, rebuilt):
    folder = published(tmp_path)
    (rebuilt / FILES[1]).unlink()
    row = compare("forward", FILES, folder, rebuilt)
    assert row.status == CANNOT_COMPARE and "figures/forward/frame-0.png" in row.detail
    text = table([row, Row("blur", IDENTICAL, "1 file, the same bytes")])
    assert text.splitlines()[1].split()[:3] == ["forward", "cannot", "compare"]
    assert text.splitlines()[-1] == "1 identical, 0 differs, 1 cannot compare: not every published figure is reproduced"


def test_verify_stops_with_one_line_on_bad_input(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "site/assets/figures" in err and "snakemake --cores 1" in err
    (tmp_path / "site" / "assets" / "figures").mkdir(parents=True)
    assert main(["verify", "--figures", "forwrd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no figure 'forwrd'" in err and "forward" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "site"]  # nothing written


# --- the rule graph in the README -------------------------------------------------------------------------------------

def dot_graph(dot: str) -> tuple[set[str], set[tuple[str, str]]]:
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    return set(labels.values()), {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)$", dot, re.M)}


def svg_graph(svg: str) -> tuple[set[str], set[tuple[str, str]]]:
    labels = dict(re.findall(r'<g id="node\d+" class="node">\n<title>(\d+)</title>\n<path[^\n]*\n<text[^>]*>([^<]+)</text>', svg))
    return set(labels.values()), {(labels[a], labels[b]) for a, b in re.findall(r"<title>(\d+)&#45;&gt;(\d+)</title>", svg)}


def test_the_rule_graph_in_the_readme_is_the_workflows(tmp_path):
    """docs/rulegraph.dot is what `snakemake --rulegraph` says today, it shows every rule of the workflow, and
    docs/rulegraph.svg draws exactly its nodes and edges. Fails after any change to the rules or to what they read
    from: run `snakemake --cores 1 rulegraph` and commit both files."""
    dot = (ROOT / "docs" / "rulegraph.dot").read_text()
    assert rulegraph(ROOT) == dot, "docs/rulegraph.dot is out of date: run `snakemake --cores 1 rulegraph`"
    copy_project(ROOT, tmp_path, ROOT / ".cache", parts=WORKFLOW)
    rules, edges = dot_graph(dot)
    assert rules == set(rule_names(snakemake_output(tmp_path, "--list-rules")))
    assert {"all", "verify", "rulegraph", "sample_setup", "post"} <= rules and ("post", "site") in edges
    assert svg_graph((ROOT / "docs" / "rulegraph.svg").read_text()) == (rules, edges)
    assert "![The workflow's rules](docs/rulegraph.svg)" in (ROOT / "README.md").read_text()
