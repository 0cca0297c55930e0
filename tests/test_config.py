"""config.yaml validation: each bad config gives one clear line, before any sampling, and writes nothing."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffusion_post import config as post_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def figure(config, name):
    section, _ = post_config.figure_table(config)[name]
    return config["figures"][section][name]


def test_shipped_config_is_valid(config):
    post_config.check(config, ROOT)


BAD = {
    "unknown key": (lambda c: c["defaults"].update(stride_typo=3), "stride_typo"),
    "unknown figure key": (lambda c: figure(c, "cfg_samples").update(guidance=7), "guidance"),
    "wrong type": (lambda c: c.update(seed="one hundred"), "not of type 'integer'"),
    "missing image": (lambda c: c["inputs"].update(test_image="no/such/photo.jpg"), "not found"),
    "unknown builtin": (lambda c: c["inputs"].update(test_image="builtin:nothing"), "no shipped image"),
    "mask outside": (lambda c: figure(c, "inpaint_test_image").update(mask=[2, 20, 24, 80]), "mask"),
    "empty mask": (lambda c: figure(c, "inpaint_test_image").update(mask=[20, 2, 24, 42]), "top < bottom"),
    "i_start past schedule": (lambda c: figure(c, "sdedit_test_image").update(i_starts=[1, 40]), "past the schedule"),
    "empty prompt": (lambda c: figure(c, "cfg_samples").update(prompt=""), "prompt"),
    "blank prompt in list": (lambda c: figure(c, "setup_stage_1").update(prompts=["a cat", "  "]), "prompts"),
    "views vs prompts": (lambda c: figure(c, "anagram_citadel_castle").update(views=["identity", "flip", "negate"]), "one prompt per view"),
    "unknown view": (lambda c: figure(c, "anagram_citadel_castle").update(views=["identity", "mirror"]), "mirror"),
    "unknown source": (lambda c: figure(c, "blur").update(source="forwards"), "not a figure"),
    "unknown input key": (lambda c: figure(c, "forward").update(image="campanile"), "not a key of inputs"),
    "even kernel": (lambda c: figure(c, "blur").update(kernel_size=4), "odd"),
    "even top window": (lambda c: c["backend"].setdefault("local", {}).update(top_window=4), "top_window 4: give an odd"),
    "share over candidates": (lambda c: c["backend"].setdefault("local", {}).update(share=9),
                              "backend/local/share 9: give 0 (each block its own candidates) to candidates (8)"),
    "window order": (lambda c: c["backend"].setdefault("local", {}).update(window=[15, 3]), "backend/local/window [15, 3]: give [small, large]"),
    "caption of no input": (lambda c: c["backend"].update(input_captions={"own_imag_1": "photo of a bicycle"}),
                            "input_captions/own_imag_1: not a key of inputs"),
    "duplicate name": (lambda c: c["figures"]["sampling"].update(blur={"technique": "sample", "prompt": "x"}), "appears in sections"),
    "guidance nan": (lambda c: figure(c, "cfg_samples").update(guidance_scale=float("nan")),
                     "at figures/sampling/cfg_samples/guidance_scale: .nan (not a number): write a finite number"),
    "guidance above range": (lambda c: figure(c, "cfg_samples").update(guidance_scale=1e30), "greater than the maximum of 100"),
    "sigma below range": (lambda c: figure(c, "blur").update(sigma=1e-200), "less than the minimum of 0.01"),
    "kernel wider than the image": (lambda c: figure(c, "blur").update(kernel_size=129), "use at most 127"),
    "stage-II kernel": (lambda c: figure(c, "hybrid_skull_castle_stage_2").update(kernel_size=513), "256-px image"),
    "count over the limit": (lambda c: figure(c, "cfg_samples").update(count=100000),
                             "100000 images (count 100000), over the limit of 32 (limits/images"),
    "i_starts over the limit": (lambda c: figure(c, "sdedit_test_image").update(i_starts=[1] * 33), "33 images (33 i_starts)"),
    "steps over the limit": (lambda c: figure(c, "cfg_samples").update(stride=1), "991 steps (start 990, stride 1)"),
    "unknown limit": (lambda c: c.update(limits={"image": 100}), "'image' was unexpected"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_config_gives_one_clear_line(config, case):
    mutate, expected = BAD[case]
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(post_config.ConfigError) as error:
        post_config.check(bad, ROOT)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message and message.startswith("config: ")


def numbers(value, where=()):
    """(path, number) of every int and float of the config (not booleans)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, (*where, i))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, value


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=[".nan", ".inf", "-.inf"])
def test_every_number_must_be_finite(config, bad):
    """Anywhere a number goes, .nan / .inf / -.inf is refused with one line naming that place (before: a NaN
    guidance scale built black images and exited 0)."""
    places = list(numbers(config))
    assert len(places) > 50
    for path, _ in places:
        broken = copy.deepcopy(config)
        parent = broken
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = bad
        with pytest.raises(post_config.ConfigError) as error:
            post_config.check(broken, ROOT)
        message = str(error.value)
        assert message.startswith(f"config: at {'/'.join(map(str, path))}: ") and "write a finite number" in message
        with pytest.raises(post_config.ConfigError, match="is not of type"):  # the schema alone refuses it too
            post_config.check_schema(broken)


def test_a_limit_is_lifted_in_the_config(config):
    figure(config, "cfg_samples").update(count=100, stride=3)
    for limit in ("images", "steps"):
        with pytest.raises(post_config.ConfigError, match=f"limits: {{{limit}: "):
            post_config.check(config, ROOT)
        config.setdefault("limits", {})[limit] = 1000
    post_config.check(config, ROOT)
    assert post_config.limits(config) == {"images": 1000, "steps": 1000}


def test_shipped_figures_are_inside_the_limits(config):
    """The default limits leave room above the post's own figures (a student may add a few images or steps)."""
    specs = [post_config.resolve(config, name) for name in post_config.figure_table(config)]
    images = max(post_config.sampled_images(s)[0] for s in specs if post_config.sampled_images(s))
    steps = max(len(post_config.timesteps(s)) for s in specs)
    limits = post_config.limits(config)
    assert 2 * images <= limits["images"] and 2 * steps <= limits["steps"]


@pytest.mark.parametrize("text, bad, message", [
    ("guidance_scale: 7 ", "guidance_scale: .nan ", "defaults/guidance_scale: .nan (not a number)"),
    ("timesteps: [250, 500, 750]", "timesteps: [250, .inf, 750]", "figures/denoising/forward/timesteps/1: .inf (infinite, or too large for a float)"),
    ("mask: [2, 20, 24, 42]", "mask: [2, -.inf, 24, 42]", "figures/editing/inpaint_test_image/mask/1: -.inf (infinite, or too large for a float)")],
    ids=[".nan", ".inf", "-.inf"])
def test_snakemake_dry_run_refuses_non_finite_numbers(tmp_path, text, bad, message):
    """The acceptance line: `snakemake -n` exits non-zero with one line, no traceback, and writes nothing."""
    for name in ("Snakefile", "workflow", "profiles", "templates", "site", "src"):
        (tmp_path / name).symlink_to(ROOT / name)
    shipped = (ROOT / "config.yaml").read_text()
    assert shipped.count(text) == 1
    (tmp_path / "config.yaml").write_text(shipped.replace(text, bad))
    before = sorted(tmp_path.rglob("*"))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if not line.startswith("Using workflow specific profile")]
    assert lines == [f"Error: config: at {message}: write a finite number there"], run.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_snakemake_stops_on_bad_config_before_any_job(tmp_path, config):
    """Through the real CLI: exit non-zero, the one line on stderr, and no output written."""
    for name in ("Snakefile", "workflow", "profiles", "templates", "site", "src"):
        (tmp_path / name).symlink_to(ROOT / name)
    bad = copy.deepcopy(config)
    figure(bad, "sdedit_test_image")["i_starts"] = [1, 99]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    assert "i_start 99 is past the schedule of 34 timesteps" in run.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "figures").exists()


def test_upsample_inherits_its_source(config):
    spec = post_config.resolve(config, "anagram_citadel_castle_stage_2")
    assert spec["technique"] == "upsample" and spec["source_technique"] == "anagram"
    assert spec["prompts"] == figure(config, "anagram_citadel_castle")["prompts"]
    assert spec["views"] == figure(config, "anagram_citadel_castle")["views"]
    hybrid = post_config.resolve(config, "hybrid_skull_castle_stage_2")
    assert (hybrid["kernel_size"], hybrid["sigma"]) == (133, 8.0)


def test_figure_files_follow_the_config(config):
    files = post_config.figure_files(config)
    names = post_config.figure_table(config)
    assert {f"figures/{n}.png" for n in names} <= set(files)
    assert "figures/iterative-comparison.png" in files
    gifs = {f for f in files if f.endswith(".gif")}
    assert gifs == {f"figures/{n}.gif" for n in names if n.startswith("anagram_") and n.endswith("_stage_2")}


def test_backend_params_are_what_pixels_depend_on(config):
    """A stage-II model change touches only stage-II figures; where caches live touches none."""
    config["backend"].update(name="deepfloyd")
    before = {name: post_config.backend_params(config, post_config.resolve(config, name)) for name in post_config.figure_table(config)}
    config["backend"].update(stage_2="DeepFloyd/IF-II-M-v1.0", cache_dir="/elsewhere")
    after = {name: post_config.backend_params(config, post_config.resolve(config, name)) for name in post_config.figure_table(config)}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {name for name in before if post_config.resolve(config, name)["technique"] == "upsample"}
    assert changed
