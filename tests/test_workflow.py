"""The whole post, built as a reader would: `snakemake --cores 1` on the shipped config (embedded default
backend, CPU; the `build` fixture of conftest.py), then dry runs after edits. The page in a browser:
test_reader.py."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import snakemake

from diffusion_post import __version__, config as post_config
from diffusion_post.backends import LOAD_MESSAGE

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not (shutil.which("jekyll") and shutil.which("chromium")),
    reason="needs Debian's jekyll and chromium (scripts/install_system_deps.sh); required when CI is set",
)


def scheduled_outputs(cwd: Path) -> set[str]:
    """The files a dry run would (re)make."""
    text = snakemake(cwd, "-n").stdout
    return {f for line in re.findall(r"^\s+output: (.+)$", text, re.M) for f in line.split(", ")}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def post_path(root: Path) -> Path:
    (post,) = (root / "site" / "_posts").glob("*-implementing-diffusion-models.md")
    return post


def test_post_and_workflow_agree_on_every_image(build):
    config = yaml.safe_load((build / "config.yaml").read_text())
    frames = [f for files in post_config.figure_frames(config).values() for f in files]
    made = {str(Path(f).relative_to("figures")) for f in post_config.figure_files(config) + frames}
    shown = set(re.findall(r"/assets/figures/([^)\s\"']+)", post_path(build).read_text()))
    assert shown == made
    assert {str(p.relative_to(build / "figures")) for p in (build / "figures").rglob("*") if p.is_file()} == made
    assert len(made) >= 40 and len(frames) >= 13 * 2


def test_fresh_dry_run_has_a_job_for_every_image(build, tmp_path):
    fresh = tmp_path / "fresh"
    shutil.copytree(build, fresh, symlinks=True, ignore=shutil.ignore_patterns("results", "figures", ".snakemake", "_site", "_posts"))
    config = yaml.safe_load((fresh / "config.yaml").read_text())
    outputs = scheduled_outputs(fresh)
    assert set(post_config.figure_files(config)) <= outputs
    assert {f for files in post_config.figure_frames(config).values() for f in files} <= outputs
    assert {f"results/{name}.safetensors" for name in post_config.figure_table(config)} <= outputs


def test_parsing_the_workflow_imports_no_torch(build, tmp_path):
    """A dry run (parse, config checks, DAG) runs with a `torch` that fails on import first on the path."""
    poisoned = tmp_path / "poisoned" / "torch"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text("raise ImportError('torch imported while parsing the workflow')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poisoned.parent), str(build / "src")])}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=build, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "torch imported" not in run.stdout + run.stderr, run.stderr[-2000:]


def test_a_build_loads_the_models_once(build):
    """Every job runs in the Snakemake process (profiles/default: force-use-threads), sharing each loaded backend:
    one load per distinct backend the figures use (the ideal backend's exact and local denoisers are two)."""
    config = yaml.safe_load((build / "config.yaml").read_text())
    backends = {json.dumps(post_config.figure_backend(config, post_config.resolve(config, name)), sort_keys=True)
                for name in post_config.figure_table(config)}
    assert (build / "build.log").read_text().count(LOAD_MESSAGE) == len(backends) == 2


def test_report_shows_every_figure_with_its_rule_and_parameters(build, tmp_path):
    """`snakemake --report`: one self-contained HTML file, every figure embedded, captioned from the config."""
    config = yaml.safe_load((build / "config.yaml").read_text())
    report = tmp_path / "report.html"
    snakemake(build, "--report", str(report))
    html = report.read_text()
    for path in post_config.figure_files(config):
        name = Path(path).name
        assert re.search(rf"data:image/(png|gif);charset=utf8;filename={re.escape(name)};base64,", html), name
    for name, (section, _) in post_config.figure_table(config).items():  # caption: the rule that sampled it
        assert re.search(rf'Figure <tt class=\\?"docutils literal\\?">{name}</tt> \(section {section}\): sampled by rule '
                         rf'<tt class=\\?"docutils literal\\?">sample_{section}</tt>', html), name
    assert f"diffusion_post {__version__}" in html  # the code version, a label of each figure


def test_nothing_to_do_after_a_build(build):
    assert "Nothing to be done" in snakemake(build, "-n").stdout


def test_one_prompt_edit_reruns_exactly_its_figures(build, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(build, edited, symlinks=True)
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["figures"]["anagrams"]["anagram_citadel_castle"]["prompts"][1] = "a snowman"
    (edited / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    post = str(post_path(edited).relative_to(edited))
    frames = post_config.figure_frames(config)
    assert scheduled_outputs(edited) == {
        "results/anagram_citadel_castle.safetensors", "figures/anagram_citadel_castle.png",
        "results/anagram_citadel_castle_stage_2.safetensors", "figures/anagram_citadel_castle_stage_2.png",
        "figures/anagram_citadel_castle_stage_2.gif", post, "site/_site/index.html",
        *frames["anagram_citadel_castle"], *frames["anagram_citadel_castle_stage_2"],
        *(f"site/assets/{f}" for f in post_config.figure_files(config) + [f for fs in frames.values() for f in fs]),
    }  # the site job's outputs: the built site and every published copy


def test_local_denoiser_settings_rerun_only_its_figures(build, tmp_path):
    """backend/local reaches the figures the local denoiser makes, not those of the exact one (denoising)."""
    edited = tmp_path / "edited"
    shutil.copytree(build, edited, symlinks=True)
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["backend"].setdefault("local", {})["window"] = [3, 17]  # a default of the code, overridden
    (edited / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rerun = {Path(f).stem for f in scheduled_outputs(edited) if f.startswith("results/") and f.endswith(".safetensors")}
    specs = {name: post_config.resolve(config, name) for name in post_config.figure_table(config)}
    assert rerun == {name for name, spec in specs.items() if spec["denoiser"] == "local"}
    assert "one_step" not in rerun and "cfg_samples" in rerun


def test_a_deleted_published_figure_is_published_again(build, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(build, again, symlinks=True)
    (again / "site/assets/figures/forward.png").unlink()
    assert scheduled_outputs(again) >= {"site/_site/index.html", "site/assets/figures/forward.png"}
    snakemake(again, "--cores", "1")
    assert digest(again / "site/assets/figures/forward.png") == digest(build / "figures/forward.png")
    assert digest(again / "site/_site/assets/figures/forward.png") == digest(build / "figures/forward.png")


@pytest.mark.parametrize("cores", ["1", "2"])  # with 2, two sampling jobs run at once in threads of one process
def test_rebuilt_figures_are_byte_identical(build, tmp_path, cores):
    again = tmp_path / "again"
    shutil.copytree(build, again, symlinks=True)
    targets = ["figures/cfg_samples.png", "figures/sdedit_test_image.png", "figures/forward.png", "figures/inpaint_test_image.png"]
    for target in targets:
        (again / target).unlink()
        (again / "results" / (Path(target).stem + ".safetensors")).unlink()
    snakemake(again, "--cores", cores, "figures")
    for target in targets:
        assert digest(again / target) == digest(build / target), target


def test_post_names_the_backend_that_made_it(build):
    text = post_path(build).read_text()
    assert "not made by DeepFloyd IF" in text


def test_post_lists_what_each_prompt_picks_in_the_set_from_its_figures(build):
    """Every prompt of the built post, once per denoiser that used it, with the captions its figures recorded."""
    from diffusion_post.figures import prompts_of
    from diffusion_post.png import read_parameters
    from diffusion_post.post import caption_shares, escape_markdown

    config = yaml.safe_load((build / "config.yaml").read_text())
    text = post_path(build).read_text()
    lines = {}
    for name in post_config.figure_table(config):
        spec = post_config.resolve(config, name)
        recorded = read_parameters(build / "figures" / f"{name}.png").get("prompt_weights", {})
        assert set(recorded) == (set(prompts_of(spec)) if "prompt" in spec or "prompts" in spec else set())
        for prompt, captions in recorded.items():
            assert 0 < sum(c["weight"] for c in captions) <= 1.0001
            lines.setdefault((prompt, spec["denoiser"]), f'- <span class="no-math">“{escape_markdown(prompt)}”</span>, '
                             f'{spec["denoiser"]} denoiser: <span class="no-math">{caption_shares(captions)}</span>')
    shown = [line for line in text.split("## What the prompts pick in the set")[1].splitlines() if line.startswith("- ")]
    assert shown == list(lines.values())
    assert ("a high quality photo", "local") in lines and ("a high quality photo", "exact") in lines
