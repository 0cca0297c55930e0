"""The whole post, built as a reader would: `snakemake --cores 1` on the shipped config (embedded default
backend, CPU), then dry runs after edits, `jekyll build`, and headless Chromium on the served page."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffusion_post import config as post_config
from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not (shutil.which("jekyll") and shutil.which("chromium")),
    reason="needs Debian's jekyll and chromium (scripts/install_system_deps.sh); required when CI is set",
)


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def scheduled_outputs(cwd: Path) -> set[str]:
    """The files a dry run would (re)make."""
    text = snakemake(cwd, "-n").stdout
    return {f for line in re.findall(r"^\s+output: (.+)$", text, re.M) for f in line.split(", ")}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """A copy of the project, built once. The backend's caches (emoji set, prompt embeddings) are shared."""
    root = tmp_path_factory.mktemp("post")
    copy_project(ROOT, root, ROOT / ".cache")
    snakemake(root, "--cores", "1")
    return root


def post_path(root: Path) -> Path:
    (post,) = (root / "site" / "_posts").glob("*-implementing-diffusion-models.md")
    return post


def test_post_and_workflow_agree_on_every_image(build):
    config = yaml.safe_load((build / "config.yaml").read_text())
    made = {Path(f).name for f in post_config.figure_files(config)}
    shown = set(re.findall(r"/assets/figures/([^)\s\"']+)", post_path(build).read_text()))
    assert shown == made
    assert {p.name for p in (build / "figures").iterdir()} == made
    assert len(made) >= 40


def test_fresh_dry_run_has_a_job_for_every_image(build, tmp_path):
    fresh = tmp_path / "fresh"
    shutil.copytree(build, fresh, symlinks=True, ignore=shutil.ignore_patterns("results", "figures", ".snakemake", "_site", "_posts"))
    config = yaml.safe_load((fresh / "config.yaml").read_text())
    outputs = scheduled_outputs(fresh)
    assert set(post_config.figure_files(config)) <= outputs
    assert {f"results/{name}.safetensors" for name in post_config.figure_table(config)} <= outputs


def test_nothing_to_do_after_a_build(build):
    assert "Nothing to be done" in snakemake(build, "-n").stdout


def test_one_prompt_edit_reruns_exactly_its_figures(build, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(build, edited, symlinks=True)
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["figures"]["anagrams"]["anagram_citadel_castle"]["prompts"][1] = "a snowman"
    (edited / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    post = str(post_path(edited).relative_to(edited))
    assert scheduled_outputs(edited) == {
        "results/anagram_citadel_castle.safetensors", "figures/anagram_citadel_castle.png",
        "results/anagram_citadel_castle_stage_2.safetensors", "figures/anagram_citadel_castle_stage_2.png",
        "figures/anagram_citadel_castle_stage_2.gif", post, "site/_site/index.html",
    }


def test_local_denoiser_settings_rerun_only_its_figures(build, tmp_path):
    """backend/local reaches the figures the local denoiser makes, not those of the exact one (denoising)."""
    edited = tmp_path / "edited"
    shutil.copytree(build, edited, symlinks=True)
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["backend"]["local"]["window"] = [3, 17]
    (edited / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rerun = {Path(f).stem for f in scheduled_outputs(edited) if f.startswith("results/") and f.endswith(".safetensors")}
    specs = {name: post_config.resolve(config, name) for name in post_config.figure_table(config)}
    assert rerun == {name for name, spec in specs.items() if spec["denoiser"] == "local"}
    assert "one_step" not in rerun and "cfg_samples" in rerun


def test_rebuilt_figures_are_byte_identical(build, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(build, again, symlinks=True)
    targets = ["figures/cfg_samples.png", "figures/sdedit_test_image.png", "figures/forward.png", "figures/inpaint_test_image.png"]
    for target in targets:
        (again / target).unlink()
        (again / "results" / (Path(target).stem + ".safetensors")).unlink()
    snakemake(again, "--cores", "1", "figures")
    for target in targets:
        assert digest(again / target) == digest(build / target), target


def test_site_shows_every_image_and_equation(build):
    from diffusion_post import site

    markdown = post_path(build).read_text()
    html = site.built_post_path(build / "site" / "_site", post_path(build).name)
    report = site.check_page(html)
    assert report.images == report.images_loaded == len(set(re.findall(r"/assets/figures/[^)\s]+", markdown)))
    assert report.math == site.count_equations(markdown).total > 20
    assert not report.js_errors and not report.math_errors and not report.failed_requests
    assert not report.external_requests
    assert site.math_mismatches(site.extract_math(markdown), report.math_spans) == []


def test_post_names_the_backend_that_made_it(build):
    text = post_path(build).read_text()
    assert "not made by DeepFloyd IF" in text
