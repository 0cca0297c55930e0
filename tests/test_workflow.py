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
from diffusion_post.spec import PROMPTLESS

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


def test_a_run_exits_without_the_last_garbage_collection(build, tmp_path):
    """The Snakefile freezes the collector at exit (project.freeze_at_exit): Python's last collection would walk
    every object torch and Snakemake made (~0.45 s of a one-prompt rebuild). A reference cycle that lives until exit,
    made by a sitecustomize module, is then never collected: its finalizer does not run."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n\nclass Cycle:\n    def __init__(self):\n        self.me = self\n\n"
        "    def __del__(self, write=os.write):\n        write(1, b'collected at exit\\n')\n\nkept = Cycle()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(build / "src")])}
    check = subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, text=True)
    assert check.stdout == "collected at exit\n"  # (without the freeze)
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=build, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "collected at exit" not in run.stdout, run.stderr[-2000:]


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
    figures = {"figures/anagram_citadel_castle.png", "figures/anagram_citadel_castle_stage_2.png",
               "figures/anagram_citadel_castle_stage_2.gif", *frames["anagram_citadel_castle"],
               *frames["anagram_citadel_castle_stage_2"]}
    assert scheduled_outputs(edited) == {
        "results/anagram_citadel_castle.safetensors", "results/anagram_citadel_castle_stage_2.safetensors",
        "results/anagram_citadel_castle.seconds.json", "results/anagram_citadel_castle_stage_2.seconds.json",
        *figures, *(f"site/assets/{f}" for f in figures), post, "site/_site/index.html",
    }  # each layout job publishes its own figures: only theirs are copied again


def test_local_denoiser_settings_rerun_only_its_figures(build, tmp_path):
    """backend/local reaches the figures the local denoiser makes, not those of the exact one (denoising)."""
    edited = tmp_path / "edited"
    shutil.copytree(build, edited, symlinks=True)
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["backend"].setdefault("local", {})["window"] = [3, 17]  # a default of the code, overridden
    (edited / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rerun = {Path(f).stem for f in scheduled_outputs(edited) if f.startswith("results/") and f.endswith(".safetensors")}
    specs = {name: post_config.resolve(config, name) for name in post_config.figure_table(config)}
    assert rerun == {name for name, spec in specs.items() if spec.get("denoiser") == "local"}  # (forward, blur: none)
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


# --- how each figure was made, and verify -----------------------------------------------------------------------------

def disclosures(root: Path) -> dict[str, dict[str, str]]:
    """What a reader sees under each figure of the built page: figure file name -> {label: text} of its
    "How this figure was made" (tags dropped, entities read)."""
    from html.parser import HTMLParser

    from diffusion_post import site

    found: dict[str, dict[str, str]] = {}

    class Reader(HTMLParser):
        image = cell = None
        label = ""

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img" and "/assets/figures/" in attrs.get("src", ""):
                self.image = attrs["src"].rsplit("/", 1)[1]
            elif tag == "details" and "provenance" in attrs.get("class", ""):
                assert self.image not in found, f"two disclosures after {self.image}"
                found[self.image] = {}
            elif tag in ("dt", "dd", "summary"):
                self.cell = [tag, ""]

        def handle_endtag(self, tag):
            if self.cell and tag == self.cell[0]:
                kind, text = self.cell
                if kind == "summary":
                    assert text == "How this figure was made"
                elif kind == "dt":
                    self.label = text
                else:
                    found[self.image][self.label] = text
                self.cell = None

        def handle_data(self, data):
            if self.cell:
                self.cell[1] += data

    Reader(convert_charrefs=True).feed(site.built_post_path(root / "site" / "_site", post_path(root).name).read_text())
    return found


def test_every_figure_shows_how_it_was_made_from_its_own_record(build):
    """Each disclosure of the built page says what the figure's PNG record and its job's seconds say (read here from
    the files, not through post.how_made), and the command that rebuilds only that file."""
    from diffusion_post.png import read_parameters
    from diffusion_post.provenance import read_seconds

    config = yaml.safe_load((build / "config.yaml").read_text())
    shown = disclosures(build)
    assert set(shown) == {Path(f).name for f in post_config.figure_files(config)}
    for file, rows in shown.items():
        name = post_config.figure_of(file)
        record = read_parameters(build / "figures" / f"{name}.png" if file.endswith(".gif") else build / "figures" / file)
        seconds = read_seconds(build / "results" / f"{name}.seconds.json")
        code, environment = record["code"], record["environment"]
        assert rows["Defined in"] == f"{record['config']} of config.yaml"
        assert record["config"] == (post_config.place(config, name) if name in post_config.figure_table(config) else "post/metrics")
        assert rows["Code"] == (f"diffusion_post {code['version']}, commit {code['commit']}, its source "
                                f"{'with uncommitted changes' if code['dirty'] else 'as committed'}")
        assert rows["Libraries"] == ", ".join(f"{lib} {version}" for lib, version in environment["libraries"].items())
        assert rows["Torch threads"] == str(environment["torch_threads"]) and rows["Processor"] == environment["processor"]
        took = seconds["seconds"]  # blur takes under 5 ms: "under 0.01 s", never "0.00 s" (test_post holds the rule)
        assert re.fullmatch(r"(\d+\.\d\d s|under 0\.01 s)( \(\d+\.\d\d s of it loading the backend\))?", rows["Time"])
        assert rows["Time"].startswith(f"{took:.2f} s" if took >= 0.01 else ("under 0.01 s", "0.01 s"))
        assert rows["Rebuild only it"] == f"snakemake --cores 1 figures/{file}"
        if name == "denoising_metrics":
            assert rows["Compares"] == ", ".join(f"{m} (figure {f})" for m, f in record["methods"].items())
            continue
        assert rows["Technique"].split()[0] == record["technique"] and rows["Seed"] == str(record["seed"])
        ran = record["technique"] not in PROMPTLESS  # the forward process and blur call no denoiser
        assert rows["Backend"] == f"{record['models']['backend']}" + (f", its {record['models']['denoiser']} denoiser" if ran else "")
        assert ("Guidance" in rows) == ran and ("Schedule" in rows) == (record["technique"] not in post_config.NO_SCHEDULE)
        prompts = record.get("prompts", [record["prompt"]] if "prompt" in record else [])
        assert rows.get("Prompts") == (", ".join(f"“{p}”" for p in prompts) if prompts else None)
        for key, input_file in record["input_files"].items():
            assert rows[f"Input {key}"] == f"{input_file['file']}, sha256 {input_file['sha256']}"
        assert len([label for label in rows if label.startswith("Input ")]) == len(record["input_files"])
    assert shown["setup_stage_2.png"]["Technique"] == "upsample (stage II)"
    assert shown["setup_stage_2.png"]["Made from"] == "the result of figure setup_stage_1"


def test_the_command_a_reader_copies_rebuilds_the_same_bytes(build, tmp_path):
    """Copy the command under a figure, run it in a project without that figure: the published bytes."""
    import shlex

    command = shlex.split(disclosures(build)["forward.png"]["Rebuild only it"])
    assert command[:3] == ["snakemake", "--cores", "1"]
    clone = tmp_path / "clone"
    shutil.copytree(build, clone, symlinks=True, ignore=shutil.ignore_patterns("figures", "results", ".snakemake"))
    snakemake(clone, *command[1:])
    for published in (build / "site/assets/figures").glob("forward*"):
        for path in [published] if published.is_file() else sorted(published.iterdir()):
            assert digest(clone / "figures" / path.relative_to(build / "site/assets/figures")) == digest(path), path


def run_verify(project: Path, tmp_path: Path, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """`diffusion-post verify ARGS` in `project`, its scratch folders under tmp_path/tmp: (exit status,
    {figure: (result, detail)} of its table, what it printed on stderr)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = subprocess.run([sys.executable, "-m", "diffusion_post.cli", "verify", *args], cwd=project, capture_output=True,
                         text=True, env={**os.environ, "TMPDIR": str(scratch)})
    assert not list(scratch.iterdir()), "verify left its scratch folder"
    rows = {}
    for line in run.stdout.splitlines()[1:-1]:
        figure, rest = line.split(maxsplit=1)
        status = next(s for s in ("identical", "differs", "cannot compare") if rest.startswith(s))
        rows[figure] = (status, rest[len(status):].strip())
    return run.returncode, rows, run.stderr


def outputs(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for folder in ("figures", "results", "site/assets/figures")
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


# The cheapest figures of each kind: the exact denoiser's (denoising), the local one's (a hybrid), a stage II.
VERIFIED = ["forward", "blur", "one_step", "iterative", "hybrid_gray_color", "hybrid_gray_color_stage_2"]


def test_verify_finds_a_fresh_build_identical(build, tmp_path):
    before = outputs(build)
    status, rows, err = run_verify(build, tmp_path, "--figures", *VERIFIED)
    assert status == 0, err[-3000:]
    assert {figure: result for figure, (result, _) in rows.items()} == dict.fromkeys(VERIFIED, "identical")
    assert rows["forward"][1] == "5 files, the same bytes"  # the strip and its 4 frames
    assert "sampled hybrid_gray_color_stage_2 " in err and "sampled hybrid_gray_color " in err
    assert outputs(build) == before and "Nothing to be done" in snakemake(build, "-n").stdout


def test_verify_names_a_changed_pixel_and_an_edited_parameter(build, tmp_path):
    """One pixel of a published figure (its record kept), and a prompt edited in config.yaml without a rebuild."""
    from diffusion_post.png import read_parameters, save_png
    from PIL import Image

    project = tmp_path / "project"
    shutil.copytree(build, project, symlinks=True)
    blur = project / "site/assets/figures/blur.png"
    image = Image.open(blur).convert("RGB")
    r, g, b = image.getpixel((5, 5))
    image.putpixel((5, 5), (r ^ 1, g, b))
    save_png(image, blur, read_parameters(blur))
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["figures"]["denoising"]["one_step"]["prompt"] = "a photo of a dog"
    (project / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    status, rows, err = run_verify(project, tmp_path, "--figures", "forward", "blur", "one_step")
    assert status == 1, err[-3000:]
    assert rows["forward"][0] == "identical"
    assert rows["blur"] == ("differs", "blur.png: other pixels; nothing recorded explains it")
    assert rows["one_step"][0] == "differs" and "the records differ in parameters (" in rows["one_step"][1]
    assert 'prompt "a high quality photo" -> "a photo of a dog"' in rows["one_step"][1]


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="looks for leftover processes in /proc")
def test_verify_interrupted_leaves_nothing(build, tmp_path):
    """Ctrl-C while verify rebuilds: its Snakemake stops, the scratch folder goes, the project is as it was."""
    import signal
    import time

    before = outputs(build)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # SIGINT as from a terminal (see test_hardening)
    try:
        run = subprocess.Popen([sys.executable, "-m", "diffusion_post.cli", "verify", "--figures", "samples"], cwd=build,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 300
    while not list(scratch.glob("*/project/.snakemake/incomplete")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # Snakemake has started the sampling job
    assert run.poll() is None, "verify finished before the signal"
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130 and "interrupted" in err, err[-2000:]
    assert not list(scratch.iterdir())
    working_there = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(scratch) in _cwd(p)]
    assert not working_there
    assert outputs(build) == before


def _cwd(process: Path) -> str:
    try:
        return os.readlink(process / "cwd")
    except OSError:
        return ""
