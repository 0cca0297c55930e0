"""The shipped config.yaml is the post: every figure of the original post, with its prompts and parameters, in the
post's order (one row per figure below, from ../shared/REFERENCE.md §1). Figures beyond the post are marked
`addition: true` and say so in their captions. If this test fails, the config drifted from the post."""

import re

import pytest
import yaml

from diffusion_post import config as post_config
from diffusion_post import post
from test_post import CONFIG, context, render

HQ = "a high quality photo"
I_STARTS = [1, 3, 5, 7, 10, 20]
SETUP = ["an oil painting of a snowy mountain village", "a photo of a cat", "a photo of a temple"]
VILLAGE_SKULL = ["an oil painting of a village with a castle", "an oil painting of a skull"]  # upright, upside down
CITADEL_CASTLE = ["a lithograph of a citadel", "a lithograph of a castle"]
RAIN_DOG = ["a rainy day", "a photo of a dog"]  # low frequencies, high frequencies
SKULL_CASTLE = ["a lithograph of a skull", "a photo of a castle"]
FLIP = ["identity", "flip"]

# (section of the post, figure, the resolved parameters it must have), in the post's order
POST = [
    ("0", "setup_stage_1", dict(technique="text_to_image", prompts=SETUP, num_inference_steps=20)),
    ("0", "setup_stage_2", dict(technique="upsample", source="setup_stage_1", prompts=SETUP, num_inference_steps=20)),
    ("0", "setup_100_steps_stage_1", dict(technique="text_to_image", prompts=["a photo of a temple"], num_inference_steps=100)),
    ("0", "setup_100_steps_stage_2", dict(technique="upsample", source="setup_100_steps_stage_1", prompts=["a photo of a temple"])),
    ("1.1", "forward", dict(technique="forward", image="test_image", timesteps=[250, 500, 750])),
    ("1.2", "blur", dict(technique="blur", source="forward")),
    ("1.3", "one_step", dict(technique="one_step", source="forward", prompt=HQ)),
    ("1.4", "iterative", dict(technique="iterative", image="test_image", prompt=HQ, start=990, stride=30, i_start=10, show_every=5)),
    ("1.5", "samples", dict(technique="sample", prompt=HQ, count=5, guidance_scale=None)),
    ("1.6", "cfg_samples", dict(technique="sample", prompt=HQ, count=5, guidance_scale=7, unconditional_prompt="")),
    ("1.7", "sdedit_test_image", dict(technique="sdedit", image="test_image", prompt=HQ, i_starts=I_STARTS, guidance_scale=7)),
    ("1.7", "sdedit_own_image_1", dict(technique="sdedit", image="own_image_1", prompt=HQ, i_starts=I_STARTS)),
    ("1.7", "sdedit_own_image_2", dict(technique="sdedit", image="own_image_2", prompt=HQ, i_starts=I_STARTS)),
    ("1.7.1", "sdedit_web_image", dict(technique="sdedit", image="web_image", prompt=HQ, i_starts=I_STARTS)),
    ("1.7.1", "sdedit_drawing_1", dict(technique="sdedit", image="drawing_1", prompt=HQ, i_starts=I_STARTS)),
    ("1.7.1", "sdedit_drawing_2", dict(technique="sdedit", image="drawing_2", prompt=HQ, i_starts=I_STARTS)),
    ("1.7.2", "inpaint_test_image", dict(technique="inpaint", image="test_image", prompt=HQ, mask=[2, 20, 24, 42])),
    ("1.7.3", "text_edit_test_image", dict(technique="sdedit", image="test_image", prompt="a rainy day", i_starts=I_STARTS)),
    ("1.7.3", "text_edit_own_image_1", dict(technique="sdedit", image="own_image_1", prompt="a rainy day", i_starts=I_STARTS)),
    ("1.7.3", "text_edit_own_image_2", dict(technique="sdedit", image="own_image_2", prompt="a rainy day", i_starts=I_STARTS)),
    ("1.8", "anagram_village_skull", dict(technique="anagram", prompts=VILLAGE_SKULL, views=FLIP, guidance_scale=7)),
    ("1.8", "anagram_village_skull_stage_2", dict(technique="upsample", prompts=VILLAGE_SKULL, views=FLIP)),
    ("1.8", "anagram_citadel_castle", dict(technique="anagram", prompts=CITADEL_CASTLE, views=FLIP, guidance_scale=7)),
    ("1.8", "anagram_citadel_castle_stage_2", dict(technique="upsample", prompts=CITADEL_CASTLE, views=FLIP)),
    ("1.9", "hybrid_rainy_day_dog", dict(technique="hybrid", prompts=RAIN_DOG, factorization="low_high", kernel_size=33, sigma=2)),
    ("1.9", "hybrid_rainy_day_dog_stage_2", dict(technique="upsample", prompts=RAIN_DOG, kernel_size=133, sigma=8)),
    ("1.9", "hybrid_skull_castle", dict(technique="hybrid", prompts=SKULL_CASTLE, factorization="low_high", kernel_size=33, sigma=2)),
    ("1.9", "hybrid_skull_castle_stage_2", dict(technique="upsample", prompts=SKULL_CASTLE, kernel_size=133, sigma=8)),
]
POST_INPUTS = {"test_image": "builtin:test_photo", "own_image_2": "builtin:drawing_happy_face"}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def specs(config) -> dict[str, dict]:
    return {name: post_config.resolve(config, name) for name in post_config.figure_table(config)}


def test_seed_and_schedule_are_the_posts(config):
    assert config["seed"] == 100
    assert (config["defaults"]["start"], config["defaults"]["stride"], config["defaults"]["guidance_scale"]) == (990, 30, 7)
    assert {key: config["inputs"][key] for key in POST_INPUTS} == POST_INPUTS


@pytest.mark.parametrize("section, name, expected", POST, ids=[f"{s} {n}" for s, n, _ in POST])
def test_every_figure_of_the_post_is_in_the_config(specs, section, name, expected):
    assert name in specs, f"figure {name} of section {section} is missing from config.yaml"
    spec = specs[name]
    assert {key: spec.get(key) for key in expected} == expected
    assert not spec.get("addition"), f"{name} is a figure of the post, not an addition"


def test_every_other_figure_is_marked_as_an_addition(specs):
    extra = {name for name, spec in specs.items() if not spec.get("addition")} - {name for _, name, _ in POST}
    assert not extra, f"figures neither in the post nor marked `addition: true`: {sorted(extra)}"
    assert any(spec.get("addition") for spec in specs.values())


def captions(text: str) -> dict[str, str]:
    """figure file name -> its alt text and caption, in the order the post shows them."""
    blocks = re.findall(r"!\[(.*?)\]\(/assets/figures/([^)]+)\)\n\n(.*?)\n\{: \.caption\}", text, re.DOTALL)
    return {file: f"{alt}\n{caption}" for alt, file, caption in blocks}


def test_the_post_shows_them_in_order_with_their_prompts(config, specs):
    shown = captions(render(context(config)))
    order = [file[: -len(".png")] for file in shown if file.endswith(".png")]
    assert [name for name in order if name in {n for _, n, _ in POST}] == [name for _, name, _ in POST]
    for _, name, _ in POST:
        spec = specs[name]
        for prompt in spec.get("prompts") or ([spec["prompt"]] if "prompt" in spec else []):
            assert f"“{post.escape_markdown(prompt)}”" in shown[f"{name}.png"], (name, prompt)


def test_additions_say_so_and_post_figures_do_not(config, specs):
    shown = captions(render(context(config)))
    for file, caption in shown.items():
        name = file.rsplit(".", 1)[0].split("-")[0]
        added = name == "denoising_metrics" or specs[name].get("addition", False)
        assert ("Added by this project" in caption) == added, file
