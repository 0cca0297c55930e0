"""The hardening matrix: bad and hostile inputs (config, images, masks, prompts, backend, CLI, faults).

Every bad input gives ONE line that says what is wrong and what to do (no traceback), leaves nothing partial
behind, and a correct build afterwards recovers. Hostile but valid inputs (odd image modes, hostile prompts) are
accepted and come out right. docs/troubleshooting.md holds the table of these cases; test_table_lists_every_case
keeps it in step with this file.

Config cases run in-process on a small config of this file's own (independent of the post's config.yaml); the
workflow cases share ONE built copy of the project (tiny backend, five figures), restored after each case.
"""

import copy
import hashlib
import io
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusion_post import config as post_config
from diffusion_post.cli import main
from diffusion_post.image_files import read_rgb
from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"

# --- a small config of our own ------------------------------------------------------------------------------------

BASE = {
    "backend": {"name": "tiny", "cache_dir": ".cache"},
    "seed": 100,
    "defaults": {"start": 990, "stride": 90, "guidance_scale": 7, "unconditional_prompt": "", "thresholding": False,
                 "noise_level": 250, "count": 1},
    "inputs": {"test_image": "builtin:test_photo"},
    "figures": {
        "denoising": {
            "forward": {"technique": "forward", "image": "test_image", "timesteps": [250, 500]},
            "blur": {"technique": "blur", "source": "forward", "kernel_size": 5, "sigma": 2.0},
            "iterative_levels": {"technique": "iterative_levels", "source": "forward", "prompt": "a high quality photo",
                                 "stride": 120, "guidance_scale": None},
        },
        "sampling": {"samples": {"technique": "sample", "prompt": "a high quality photo", "count": 2}},
        "editing": {"inpaint": {"technique": "inpaint", "image": "test_image", "prompt": "a high quality photo",
                                "mask": [2, 20, 24, 42]}},
    },
    "post": {"title": "Implementing Diffusion Models", "date": "2026-11-28", "published": True, "tags": ["diffusion"],
             "metrics": {"source": "forward", "methods": {"blur": "blur", "iterative": "iterative_levels"}}},
}


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def truncated_png() -> bytes:
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    return data[: len(data) // 2]


def white_box_mask(value: int = 255) -> bytes:
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 20:40] = value
    return png_bytes(Image.fromarray(mask))  # mode L


def section_of(config: dict, name: str) -> dict:
    return next(figs for figs in config["figures"].values() if name in figs)


def set_figure(name: str, **values):
    return lambda c: section_of(c, name)[name].update(values)


# case id -> (mutation of the config dict, files to write next to it {name: bytes | None for a folder}, expected text)
CONFIG_CASES = {
    "prompt-newline": (set_figure("samples", prompt="a cat\n# Heading\n$x$"), {}, "U+000A (line feed)"),
    "prompt-carriage-return": (set_figure("samples", prompt="a cat\r\n- item"), {}, "U+000D"),
    "prompt-escape-sequence": (set_figure("samples", prompt="a \x1b[31mred\x1b[0m cat"), {}, "U+001B"),
    "prompt-line-separator": (set_figure("samples", prompt="a cat\u2028```"), {}, "U+2028"),
    "title-newline": (lambda c: c["post"].update(title="Title\n---\nlayout: evil"), {}, "at post/title"),
    "tag-control-character": (lambda c: c["post"].update(tags=["ok", "bad\ttag"]), {}, "at post/tags/1"),
    "input-path-newline": (lambda c: c["inputs"].update(test_image="photo\n.png"), {}, "at inputs/test_image"),
    "input-key-newline": (lambda c: c["inputs"].update({"a\nb": "builtin:test_photo"}), {}, "U+000A"),
    "stride-larger-than-start": (set_figure("samples", start=20, stride=30), {}, "stride 30 is larger than start 20"),
    "one-step-schedule": (set_figure("samples", num_inference_steps=1), {}, "num_inference_steps 1 gives one timestep"),
    "levels-stride-above-noise-level": (set_figure("iterative_levels", stride=300), {}, "larger than the noise level t = 250"),
    "upsample-of-itself": (lambda c: c["figures"].setdefault("setup", {}).update(
        up={"technique": "upsample", "source": "up"}), {}, "go round in a loop (up -> up)"),
    "source-cycle": (lambda c: c["figures"].setdefault("setup", {}).update(
        a={"technique": "upsample", "source": "b"}, b={"technique": "upsample", "source": "a"}), {}, "go round in a loop"),
    "unknown-section": (lambda c: c["figures"].update(samplng=c["figures"].pop("sampling")), {}, "'samplng' is not one of"),
    "metrics-source-not-forward": (lambda c: c["post"]["metrics"].update(source="blur"), {}, "not a forward figure: use one of forward"),
    "metrics-unknown-method-figure": (lambda c: c["post"]["metrics"]["methods"].update(one_step="one_stp"), {},
                                      "'one_stp' is not a blur, one_step or iterative_levels figure of 'forward'"),
    "input-truncated-image": (lambda c: c["inputs"].update(test_image="cut.png"), {"cut.png": truncated_png()},
                              "inputs/test_image: cannot read image"),
    "input-not-an-image": (lambda c: c["inputs"].update(test_image="notes.png"), {"notes.png": b"just text\n"},
                           "inputs/test_image: cannot read image"),
    "input-is-a-folder": (lambda c: c["inputs"].update(test_image="photos"), {"photos": None}, "is a folder, not an image file"),
    "input-missing": (lambda c: c["inputs"].update(test_image="nowhere.png"), {}, "'nowhere.png' not found"),
    "mask-file-all-black": (set_figure("inpaint", mask="mask.png"), {"mask.png": white_box_mask(0)}, "has no white pixel"),
    "mask-neither-key-nor-file": (set_figure("inpaint", mask="mask_typo.png"), {}, "neither a key of inputs nor an image file"),
    "mask-is-a-photo": (set_figure("inpaint", mask="test_image"), {}, "is a shipped photo, not a mask"),
    "mask-wrong-length": (set_figure("inpaint", mask=[1, 2, 3]), {}, "at figures/editing/inpaint/mask"),
    "deepfloyd-local-folder-missing": (lambda c: c["backend"].update(name="deepfloyd", stage_1="./models/IF-I-L", stage_2=None),
                                       {}, "local model folder './models/IF-I-L' not found"),
    "t5-8bit-without-bitsandbytes": (lambda c: c["backend"].update(t5="8bit"), {}, "t5: 8bit needs bitsandbytes"),
    "caption-of-no-input": (lambda c: c["backend"].update(input_captions={"own_imag_1": "photo of a bicycle"}), {},
                            "backend/input_captions/own_imag_1: not a key of inputs"),
    "guidance-scale-nan": (set_figure("samples", guidance_scale=float("nan")), {}, "guidance_scale: .nan (not a number)"),
    "default-guidance-scale-inf": (lambda c: c["defaults"].update(guidance_scale=float("inf")), {}, "defaults/guidance_scale: .inf"),
    "sigma-minus-inf": (set_figure("blur", sigma=float("-inf")), {}, "blur/sigma: -.inf (infinite, or too large for a float)"),
    "training-lr-nan": (lambda c: c.update(training={"lr": float("nan")}), {}, "at training/lr: .nan"),
    "guidance-scale-1e30": (set_figure("samples", guidance_scale=1e30), {}, "greater than the maximum of 100"),
    "sigma-1e-200": (set_figure("blur", sigma=1e-200), {}, "less than the minimum of 0.01"),
    "kernel-wider-than-image": (set_figure("blur", kernel_size=129), {}, "kernel_size 129 is wider than the 64-px image"),
    "count-over-limit": (set_figure("samples", count=100000), {}, "100000 images (count 100000), over the limit of 32"),
    "steps-over-limit": (set_figure("samples", stride=1), {}, "991 steps (start 990, stride 1), over the limit of 250"),
}

# case id -> (YAML text transformation, expected text)
YAML_CASES = {
    "duplicate-figure-name": (lambda text: text.replace("  sampling:\n", "  sampling:\n    samples:\n      technique: sample\n"
                                                        "      prompt: a dog\n", 1), "duplicate key 'samples'"),
    "yaml-syntax-error": (lambda text: text.replace("seed: 100", "seed: [100"), "YAML syntax error"),
    "yaml-tab-indentation": (lambda text: text.replace("  name: tiny", "\tname: tiny"), "YAML syntax error"),
    "yaml-nan": (lambda text: text.replace("guidance_scale: 7", "guidance_scale: .NaN"), "defaults/guidance_scale: .nan"),
    "yaml-number-too-large": (lambda text: text.replace("sigma: 2.0", "sigma: 1.0e+400"), "blur/sigma: .inf (infinite, or too large for a float)"),
}


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"") for p in sorted(folder.rglob("*"))}


def assert_one_line(message: str, expected: str) -> None:
    assert expected in message, message
    assert "\n" not in message.strip() and "Traceback" not in message, message


def config_case_message(case: str, folder: Path) -> str:
    """Write the case's config (and files) into `folder`, load it, return the one-line error."""
    mutate, files, _ = CONFIG_CASES[case]
    for name, data in files.items():
        (folder / name).mkdir() if data is None else (folder / name).write_bytes(data)
    bad = copy.deepcopy(BASE)
    mutate(bad)
    path = write_config(folder, bad)
    before = listing(folder)
    with pytest.raises(post_config.ConfigError) as error:
        post_config.load(path)
    assert listing(folder) == before  # nothing written
    return str(error.value).replace(f"{folder}/", "").replace(str(folder), ".")


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_bad_config(case, tmp_path):
    assert_one_line(config_case_message(case, tmp_path), CONFIG_CASES[case][2])
    post_config.load(write_config(tmp_path, BASE))  # recovery: the correct config passes


def run_cli(argv: list[str], folder: Path) -> str:
    """diffusion-post's stderr for `argv` run in `folder` (paths shown relative to it); it must exit with 2."""
    import contextlib

    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(err):
            assert main(argv) == 2
    finally:
        os.chdir(cwd)
    return err.getvalue().replace(f"{folder}/", "")


def yaml_case_message(case: str, folder: Path) -> str:
    path = write_config(folder, BASE)
    path.write_text(YAML_CASES[case][0](path.read_text()))
    return run_cli(["check-config", "config.yaml"], folder)


@pytest.mark.parametrize("case", YAML_CASES, ids=list(YAML_CASES))
def test_bad_yaml_through_the_cli(case, tmp_path):
    expected = YAML_CASES[case][1]
    err = yaml_case_message(case, tmp_path)
    path = tmp_path / "config.yaml"
    good = yaml.safe_dump(BASE, sort_keys=False)
    assert_one_line(err, expected)
    if case.startswith(("duplicate", "yaml-syntax", "yaml-tab")):  # what the parser finds is named by its line
        assert re.search(r"line \d+", err), err
    if case == "yaml-syntax-error":
        assert re.search(r"line \d+, column \d+", err), err
    path.write_text(good)
    assert main(["check-config", str(path)]) == 0


def test_duplicate_key_names_its_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\nb:\n  c: 2\n  c: 3\n")
    with pytest.raises(post_config.ConfigError, match=r"line 4: duplicate key 'c' \(also on line 3\)"):
        post_config.load_yaml(path)


@pytest.mark.parametrize("start, stride", [(990, 990), (30, 30), (990, 495), (990, 400)])
def test_every_template_renders_every_short_schedule(start, stride):
    """Schedules of two or three timesteps pass the check and render (before: `steps[1]` crashed the post rule for
    one-step schedules, and nothing stopped them)."""
    from test_post import context, load_config, render

    config = load_config()
    config["defaults"].update(start=start, stride=stride)
    schedule = list(range(start, -1, -stride))
    steps = len(schedule)
    for spec in (s for figs in config["figures"].values() for s in figs.values()):
        if "num_inference_steps" in spec:
            spec["num_inference_steps"] = steps
        if "i_starts" in spec:
            spec["i_starts"] = [0, steps - 1]
        spec.update({"i_start": 0, "show_every": 1} if spec["technique"] == "iterative" else {})
        spec.update({"stride": min(stride, 250)} if spec["technique"] == "iterative_levels" else {})
    post_config.check(config, ROOT)
    text = render(context(config))
    assert "{{" not in text and "<<" not in text
    assert f"the {steps} timesteps {', '.join(map(str, schedule))}" in text
    assert f"{steps} evenly spaced timesteps (" in text


def test_make_result_refuses_non_finite_parameters_and_results(tmp_path):
    """What reaches the sampling code without config.load (a script, a benchmark) is checked too: a parameter that is
    not finite stops before the model loads, and a result holding NaN (a guidance scale of 1e30 overflows float32)
    is not written."""
    from diffusion_post.build import make_result

    config = project_config(ROOT / ".cache")
    spec = {**post_config.resolve(config, "samples"), "count": 1, "num_inference_steps": 3}
    backend = post_config.figure_backend(config, spec)
    output = tmp_path / "samples.safetensors"
    with pytest.raises(ValueError, match=r"at figures/samples/guidance_scale: \.nan \(not a number\)"):
        make_result("samples", {**spec, "guidance_scale": float("nan")}, backend, {}, None, str(output))
    with pytest.raises(ValueError, match="sampling gave NaN or infinite values in its images, so nothing was written"):
        make_result("samples", {**spec, "guidance_scale": 1e30}, backend, {}, None, str(output))
    assert list(tmp_path.iterdir()) == []
    make_result("samples", spec, backend, {}, None, str(output))  # recovery: a finite scale samples
    assert output.is_file()


# --- images: one loader for inputs and image sets -----------------------------------------------------------------

def _gradient_16_bit() -> bytes:
    ramp = (np.linspace(0, 65535, 64)[None].repeat(16, 0)).astype(np.uint16)
    return png_bytes(Image.fromarray(ramp))  # mode I;16


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.paste(1, (8, 8, 24, 24))
    return png_bytes(image, transparency=0)  # index 0 (black) is transparent


def _transparent_sketch() -> bytes:
    """Black strokes on a fully transparent background, as drawing programs export sketches."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[15:17, 4:28] = (0, 0, 0, 255)
    return png_bytes(Image.fromarray(rgba))  # mode RGBA


def _gray_alpha() -> bytes:
    la = np.zeros((16, 16, 2), np.uint8)
    la[:, :8] = (50, 255)
    return png_bytes(Image.fromarray(la))  # mode LA


# case id -> (file bytes, check of the (H, W, 3) uint8 array read_rgb gives)
IMAGE_CASES = {
    "png-16-bit-gray": (_gradient_16_bit(), lambda a: a[0, 0, 0] == 0 and a[0, -1, 0] == 255 and 120 <= a[0, 32, 0] <= 135),
    "png-palette-transparent": (_palette_with_transparency(), lambda a: (a[0, 0] == 255).all() and tuple(a[16, 16]) == (200, 30, 30)),
    "png-transparent-sketch": (_transparent_sketch(), lambda a: (a[0, 0] == 255).all() and (a[16, 16] == 0).all()),
    "png-gray-alpha": (_gray_alpha(), lambda a: (a[0, 0] == 50).all() and (a[0, 12] == 255).all()),
}


@pytest.mark.parametrize("case", IMAGE_CASES, ids=list(IMAGE_CASES))
def test_image_modes_load_right(case, tmp_path):
    """Before: a 16-bit PNG became all white, a transparent sketch black (the input loader dropped alpha)."""
    data, check = IMAGE_CASES[case]
    (tmp_path / "in.png").write_bytes(data)
    array = np.asarray(read_rgb(tmp_path / "in.png"))
    assert array.dtype == np.uint8 and array.shape[2] == 3
    assert check(array), array[::8, ::8, 0]
    from diffusion_post.data.emoji_set import load_folder
    from diffusion_post.images import load_image

    x = load_image(tmp_path / "in.png", 64)  # the input loader and the image-set loader read alike
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "in.png").write_bytes(data)
    images, _ = load_folder(tmp_path / "set", size=64)
    assert abs(x.add(1).mul(127.5).mean().item() - images.astype(float).mean()) < 3


# --- the command line ----------------------------------------------------------------------------------------------

class Unsafe:
    def __reduce__(self):
        return (print, ("unpickled!",))


def _pickle_file(path: Path) -> None:
    path.write_bytes(pickle.dumps({"a cat": Unsafe()}))


def _embeddings(shape) -> callable:
    return lambda path: torch.save({"a cat": torch.zeros(shape), "a dog": torch.zeros(shape)}, path)


def _truncated_figure(path: Path) -> None:
    path.write_bytes(truncated_png())


def _text_as_png(path: Path) -> None:
    path.write_text("hello")


def _nan_config(path: Path) -> None:
    write_config(path.parent, BASE).rename(path)
    path.write_text(path.read_text().replace("guidance_scale: 7", "guidance_scale: .nan"))


# case id -> (argv with {file} for the prepared file, preparation of {file} or None, expected text)
CLI_CASES = {
    "describe-not-a-png": (["describe", "{file}"], _text_as_png, "is not a readable PNG"),
    "describe-truncated-png": (["describe", "{file}"], _truncated_figure, "is not a readable PNG"),
    "describe-folder": (["describe", "{file}"], lambda p: p.mkdir(), "is a folder"),
    "describe-png-without-parameters": (["describe", "{file}"], lambda p: p.write_bytes(png_bytes(Image.new("RGB", (4, 4)))),
                                        "carries no 'parameters' metadata"),
    "describe-missing-file": (["describe", "{file}"], None, "input.png: no such file or directory: check the path"),
    "import-embeddings-pickle": (["import-embeddings", "{file}", "--cache-dir", "{dir}/cache"], _pickle_file,
                                 "refused: it holds Python objects besides tensors"),
    "import-embeddings-not-tensors": (["import-embeddings", "{file}", "--cache-dir", "{dir}/cache"], _text_as_png,
                                      "not a torch.save file"),
    "import-embeddings-wrong-shape": (["import-embeddings", "{file}", "--cache-dir", "{dir}/cache"], _embeddings((1, 10, 4096)),
                                      "expected float (1, 77, D)"),
    "import-embeddings-wrong-width": (["import-embeddings", "{file}", "--cache-dir", "{dir}/cache"], _embeddings((1, 77, 32)),
                                      "but DeepFloyd/t5-v1_1-xxl makes (77, 4096)"),
    "check-config-folder": (["check-config", "{dir}"], None, ".: is a directory: check the path"),
    "figure-unknown-name": (["figure", "no_such_figure"], None, "no figure 'no_such_figure'"),
    "figure-with-nan-guidance": (["figure", "samples", "--config", "{file}"], _nan_config, "at defaults/guidance_scale: .nan"),
}


def cli_case_message(case: str, folder: Path) -> str:
    argv, prepare, _ = CLI_CASES[case]
    file = folder / "input.png"
    if prepare:
        prepare(file)
    write_config(folder, BASE)
    before = listing(folder)
    message = run_cli([a.format(file="input.png", dir=".") for a in argv], folder)
    assert listing(folder) == before  # nothing written, not even an empty cache folder
    return message


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_cli_bad_input(case, tmp_path, capsys):
    err = cli_case_message(case, tmp_path)
    assert_one_line(err, CLI_CASES[case][2])
    assert err.startswith("diffusion-post: error: ")
    assert "unpickled!" not in capsys.readouterr().out


def test_import_embeddings_accepts_the_right_shape(tmp_path, capsys):
    """Recovery for the import cases: a good file imports, and the cache holds what was given."""
    good = tmp_path / "embeds.pth"
    torch.save({"a cat": torch.ones(1, 77, 4096), "a dog": torch.zeros(77, 4096)}, good)
    assert main(["import-embeddings", str(good), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "imported 2 prompt embeddings" in capsys.readouterr().out


# --- backend --------------------------------------------------------------------------------------------------------

BACKEND_CASES = {
    "deepfloyd-local-folder-gone": (lambda tmp: tmp / "models" / "IF-I-L", "local model folder"),
    "deepfloyd-local-folder-empty": (lambda tmp: tmp, "from the local folder"),
}


def backend_case_message(case: str, folder: Path) -> str:
    from diffusers import UNet2DConditionModel

    from diffusion_post.backends.deepfloyd import ModelUnavailable, _load

    with pytest.raises(ModelUnavailable) as error:
        _load(UNet2DConditionModel, str(BACKEND_CASES[case][0](folder)), subfolder="unet")
    return str(error.value).replace(f"{folder}/", "").replace(str(folder), ".")


@pytest.mark.parametrize("case", BACKEND_CASES, ids=list(BACKEND_CASES))
def test_local_model_folder_message(case, tmp_path):
    """A local folder that is missing or empty is a path to fix, not a hub login (before: `hf auth login`)."""
    message = backend_case_message(case, tmp_path)
    assert_one_line(message, BACKEND_CASES[case][1])
    assert "hf auth login" not in message and "unet" in message


# --- the shared workflow project -----------------------------------------------------------------------------------

HOSTILE_PROMPTS = {
    "prompt-script-tag": "<script>document.title='PWNED'</script>a cat",
    "prompt-img-onerror": '<img src=x onerror="document.body.dataset.pwned=1">',
    "prompt-liquid": "{{ site.title }} {% raw %} a cat {% endraw %}",
    "prompt-mathjax-dollars": "$x^2$ costs $5 and $$\\int f$$",
    "prompt-markdown-specials": "*bold* _it_ | table | `code` [link](http://example.com) # not a heading",
    "prompt-html-entities": "&lt;b&gt; &amp; &#x3C;script&#x3E;",
    "prompt-2000-characters": "a very long prompt " * 105 + "END",
    "prompt-emoji": "a 🐱 cat with 👩‍🚀 and 🏳️‍🌈",
    "prompt-right-to-left": "قطة في حديقة \u202eevil\u202c שלום",
}
WORKFLOW_CASES = {
    "deleted-figure": "a deleted figure PNG is made again by the default target, byte-identical",
    "deleted-result": "a deleted result is made again, and its figure byte-identical",
    "sigint-mid-sampling": "Ctrl-C while a figure samples, then a plain rebuild",
    "sigkill-mid-sampling": "kill -9 while a figure samples, then a plain rebuild",
    "bad-config-keeps-outputs": "a config error stops before any job and leaves the old post and figures untouched",
    "result-file-mode": "results and figures are written with the usual umask (0644), not 0600",
    "input-file-name-with-backtick": "an input file named with a backtick and dollars shows by name, inert, in a code span",
    "mask-as-file": "an inpainting mask given as a black-and-white file",
}
ODD_INPUT = "my `odd` $x$ photo.png"  # an input file name that would break a plain code span


# One intra-op thread in the workflow's processes: on a busy 2-core machine OpenMP threads spinning against other
# processes make the tiny models ~3x slower (measured: 0.58 vs 0.21 CPU s per step); every comparison below is
# between runs with the same setting.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, env=ENV)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def digests(root: Path) -> dict[str, str]:
    """Every figure and result (not the seconds each job took, which differ from run to run)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("figures", "results") for p in sorted((root / folder).rglob("*"))
            if p.is_file() and not p.name.endswith(".seconds.json")}


def leftovers(root: Path) -> list[str]:
    """Temporary files a write left behind: every write goes through a hidden .NAME.*.tmp file."""
    return [str(p) for folder in ("figures", "results", "site/_posts") for p in (root / folder).rglob(".*tmp*")]


def project_config(cache: Path) -> dict:
    config = copy.deepcopy(BASE)
    config["backend"]["cache_dir"] = str(cache)
    config["post"].pop("metrics")  # the metrics plot needs matplotlib and scikit-image: tested elsewhere
    config["inputs"]["odd"] = ODD_INPUT
    config["inputs"]["mask"] = "mask.png"
    config["figures"]["editing"]["inpaint"]["mask"] = "mask"
    config["figures"]["editing"]["inpaint"]["image"] = "odd"
    config["figures"]["setup"] = {"hostile": {"technique": "text_to_image", "prompts": list(HOSTILE_PROMPTS.values()),
                                              "num_inference_steps": 8}}
    config["post"]["title"] = "<script>document.title='PWNED'</script> {{ page.title }} $x$"
    config["post"]["tags"] = ["<b>bold</b>", "{% raw %}"]
    return config


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project with the small config (tiny backend), built once."""
    root = tmp_path_factory.mktemp("hardening")
    copy_project(ROOT, root, ROOT / ".cache")
    write_config(root, project_config(ROOT / ".cache"))
    (root / ODD_INPUT).write_bytes(_transparent_sketch())
    (root / "mask.png").write_bytes(white_box_mask())
    snakemake(root, "--cores", "1")
    return root


def post_text(root: Path) -> str:
    (post,) = (root / "site" / "_posts").glob("*.md")
    return post.read_text()


def test_workflow_built(project):
    assert not leftovers(project)
    assert "Nothing to be done" in snakemake(project, "-n").stdout


def test_result_file_mode(project):
    """Before: results were 0600 (safetensors creates its files so; atomic_path kept the mode)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [*(project / "results").glob("*.safetensors"), *(project / "figures").glob("*.png")]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


@pytest.mark.parametrize("target", ["figures/blur.png", "results/samples.safetensors"], ids=["deleted-figure", "deleted-result"])
def test_deleted_output_is_made_again(project, target):
    """Before: "Nothing to be done" (Snakemake does not remake a missing intermediate file whose consumers are up
    to date); now every figure and result is a target of the default rule."""
    before = digests(project)
    (project / target).unlink()
    assert target in snakemake(project, "-n").stdout
    snakemake(project, "--cores", "1")
    assert digests(project) == before


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the job's CPU time from /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint-mid-sampling", "sigkill-mid-sampling"])
def test_interrupted_sampling_then_plain_rebuild(project, sig):
    """Stop a build while the `hostile` figure samples (past the imports and the model load: 8 CPU seconds into its
    job), then run a plain `snakemake --cores 1`: it must finish by itself and give the same bytes. Before: the
    next build stopped with IncompleteFilesException (SIGINT) or a LockException (SIGKILL)."""
    before = digests(project)
    for target in ("results/hostile.safetensors", "figures/hostile.png"):
        (project / target).unlink()
    log = project / "interrupted.log"
    with open(log, "w") as out:
        # a handler (unlike SIG_IGN) is reset to the default in the child: SIGINT as from a terminal, even when
        # the test suite itself runs in the background
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=project, stdout=out,
                                   stderr=out, env=ENV)
        finally:
            signal.signal(signal.SIGINT, previous)
        deadline = time.monotonic() + 600
        while "rule sample_setup" not in log.read_text() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        start = _cpu_seconds(run.pid)
        while run.poll() is None and _cpu_seconds(run.pid) - start < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.poll() is None and not (project / "results/hostile.safetensors").exists(), \
            "the figure finished before the signal: make it slower\n" + log.read_text()[-2000:]
        run.send_signal(sig)
        run.wait(timeout=300)
    assert run.returncode != 0
    assert not leftovers(project)
    assert not (project / "results/hostile.safetensors").exists()
    snakemake(project, "--cores", "1")  # plain: no --unlock, no --rerun-incomplete
    assert digests(project) == before
    log.unlink()


def test_an_ignored_sigint_stays_ignored():
    """A build that a script starts in the background (`snakemake ... &`) starts with SIGINT ignored. Were the stop
    handler installed, a SIGINT would stop the running job, and Snakemake, which drops a job that raised
    KeyboardInterrupt without waking its scheduler, would then wait for ever (seen when the test suite ran in the
    background)."""
    from diffusion_post import interrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupt.install()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # a handler would have run by now
        assert not interrupt.STOP.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupt.STOP.clear()


def test_bad_config_keeps_outputs(project):
    """A schedule with a single step used to pass validation and crash the post rule, deleting the old post."""
    config = project / "config.yaml"
    good = config.read_text()
    post = next((project / "site" / "_posts").glob("*.md"))
    before = {**digests(project), "post": hashlib.sha256(post.read_bytes()).hexdigest()}
    bad = yaml.safe_load(good)
    bad["figures"]["sampling"]["samples"].update(start=200, stride=300)
    config.write_text(yaml.safe_dump(bad, sort_keys=False, allow_unicode=True))
    try:
        run = snakemake(project, "--cores", "1", check=False)
    finally:
        config.write_text(good)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: config: figures/sampling/samples: stride 300 is larger than start 200, so the schedule is "
                      "the single timestep 200: use a stride of at most 200"], run.stderr
    assert "Traceback" not in run.stderr
    assert {**digests(project), "post": hashlib.sha256(post.read_bytes()).hexdigest()} == before
    assert "Nothing to be done" in snakemake(project, "-n").stdout  # recovery: the fixed config needs nothing


def test_inputs_show_by_name_and_mask_file(project):
    """The odd input file name renders inert in a code span, never as a path; the mask file is white = new."""
    text = post_text(project)
    assert "(`` my `odd` $x$ photo.png ``)" in text
    assert str(project) not in text and str(ROOT) not in text
    from diffusion_post.images import load_result

    tensors, parameters = load_result(project / "results" / "inpaint.safetensors")
    mask = tensors["mask"][0, 0]
    assert mask[10:30, 20:40].eq(1).all() and mask.sum() == 20 * 20  # the white box of mask.png, nothing else
    assert parameters["input_files"]["mask"]["file"] == "mask.png"
    assert parameters["input_files"]["image"] == {
        "file": ODD_INPUT, "sha256": hashlib.sha256((project / ODD_INPUT).read_bytes()).hexdigest()}
    kept = tensors["images"][3]  # the result: outside the mask, the input (white background, black stroke)
    original = tensors["images"][0]
    assert torch.allclose(kept * (1 - mask), original * (1 - mask), atol=1e-5)


# --- hostile prompts in the browser ----------------------------------------------------------------------------------

def page_facts(url: str) -> dict:
    """What a reader's browser ends up with on the page at `url`: the DOM after its scripts ran and the console
    errors, through the reader's checks of tests/browser.py (Playwright on Debian's chromium).

    Returns {"title", "h1", "scripts": [src or inline text], "handlers": ["tag onX"], "images": [src],
    "alts": [alt], "pwned": bool, "captions": [text], "code": [text], "js_errors": [...]}."""
    from html.parser import HTMLParser

    from browser import Browser

    with Browser() as chromium, chromium.open(url) as (page, report):
        page.wait_for_timeout(500)  # let MathJax and the figure script finish
        dom, js_errors = page.content(), list(report.js_errors)
    facts = {"title": "", "h1": "", "scripts": [], "handlers": [], "images": [], "alts": [], "pwned": False,
             "captions": [], "code": []}

    class Reader(HTMLParser):
        stack: list[tuple[str, dict]] = []
        texts: dict[int, list[str]] = {}

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            facts["handlers"] += [f"{tag} {a}" for a in attrs if a.startswith("on")]
            facts["pwned"] |= "data-pwned" in attrs
            if tag == "img":
                facts["images"].append(attrs.get("src"))
                facts["alts"].append(attrs.get("alt"))
            if tag in ("img", "br", "meta", "link", "input", "hr"):
                return
            self.stack.append((tag, attrs))
            self.texts[len(self.stack)] = []

        def handle_endtag(self, tag):
            while self.stack:
                open_tag, attrs = self.stack.pop()
                text = "".join(self.texts.pop(len(self.stack) + 1, []))
                if self.stack:
                    self.texts[len(self.stack)].append(text)
                if open_tag == "script":
                    facts["scripts"].append(attrs.get("src") or text)
                elif open_tag == "title":
                    facts["title"] = text
                elif open_tag == "h1":
                    facts["h1"] = text
                elif open_tag == "code":
                    facts["code"].append(text)
                elif open_tag == "p" and "caption" in (attrs.get("class") or ""):
                    facts["captions"].append(" ".join(text.split()))
                if open_tag == tag:
                    break

        def handle_data(self, data):
            if self.stack:
                self.texts[len(self.stack)].append(data)

    Reader(convert_charrefs=True).feed(dom)
    facts["js_errors"] = js_errors
    return facts


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser") or os.environ.get("CI")),
                    reason="needs Debian's chromium (scripts/install_system_deps.sh); required when CI is set")
def test_hostile_prompts_are_shown_literally(project):
    from browser import serve_directory

    from diffusion_post import site

    site_dir = project / "site" / "_site"
    page = site.built_post_path(site_dir, next((project / "site" / "_posts").glob("*.md")).name)
    with serve_directory(site_dir) as base:
        facts = page_facts(f"{base}/{page.relative_to(site_dir).as_posix()}")
    title = project_config(ROOT / ".cache")["post"]["title"]
    assert not facts["pwned"] and facts["title"].startswith(title)  # no script ran (it would set the title to PWNED)
    assert not facts["handlers"]  # no element with an event handler
    assert all(re.fullmatch(r"(\.\./)*assets/figures/[\w/.-]+", src) for src in facts["images"]), facts["images"]
    assert not any("PWNED" in s or "onerror" in s for s in facts["scripts"])
    layout_scripts = sum(p.read_text().count("<script") for p in (project / "site" / "_layouts").glob("*.html"))
    # besides the layouts' scripts, only those MathJax's loader adds from its own folder (the font's data on demand)
    mathjax_loaded = [s for s in facts["scripts"] if s.startswith(f"{base}/assets/mathjax/")]
    assert len(facts["scripts"]) - len(mathjax_loaded) == layout_scripts, facts["scripts"]
    assert not facts["js_errors"], facts["js_errors"]
    assert facts["h1"] == title
    (caption,) = [c for c in facts["captions"] if c.startswith("Stage I, 64 px")]
    for case, prompt in HOSTILE_PROMPTS.items():
        assert f"“{' '.join(prompt.split())}”" in caption, case  # literally, and not typeset by MathJax
    assert "my `odd` $x$ photo.png" in facts["code"]


# --- the table in docs/troubleshooting.md ------------------------------------------------------------------------------

WORKFLOW_MESSAGES = {
    "sigint-mid-sampling": ("(Snakemake's own: terminating)", "none: no `.*.tmp` file, no result of the interrupted figure",
                            "plain `snakemake --cores 1` (the profile has `rerun-incomplete`); the figure comes out byte-identical"),
    "sigkill-mid-sampling": ("(none: the process is killed)", "none: no `.*.tmp` file, no result of the interrupted figure",
                             "plain `snakemake --cores 1`: the stale lock is removed (`nolock` is not needed), incomplete jobs rerun; byte-identical"),
    "bad-config-keeps-outputs": ("`Error: config: figures/...: stride 300 is larger than start 200 ...`",
                                 "none: no job runs; the old post, figures and results stay as they were", "fix config.yaml"),
    "deleted-figure": ("(none)", "-", "`snakemake --cores 1` makes it again (and the post and site), byte-identical"),
    "deleted-result": ("(none)", "-", "`snakemake --cores 1` samples it again; result and figure byte-identical"),
    "result-file-mode": ("(none)", "-", "-"),
    "input-file-name-with-backtick": ("(none)", "-", "-"),
    "mask-as-file": ("(none)", "-", "-"),
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def matrix_table() -> str:
    """The markdown table of every case of this file, with the messages the cases really give (each run in a
    temporary folder; docs/troubleshooting.md embeds the table verbatim)."""
    import tempfile

    def message(run, case) -> str:
        with tempfile.TemporaryDirectory() as folder:
            return "`" + _cell(run(case, Path(folder)).strip()).replace("`", "'") + "`"

    none = "none: nothing is written"
    rows = [("config", c, message(config_case_message, c), none, "fix config.yaml") for c in CONFIG_CASES]
    rows += [("config file", c, message(yaml_case_message, c), none, "fix config.yaml") for c in YAML_CASES]
    rows += [("input image", c, "(accepted: read as 8-bit RGB, transparency on white)", "-", "-") for c in IMAGE_CASES]
    rows += [("command line", c, message(cli_case_message, c), none, "give the right file") for c in CLI_CASES]
    rows += [("backend", c, message(backend_case_message, c), none, "fix backend/stage_1 in config.yaml") for c in BACKEND_CASES]
    rows += [("prompt", c, "(accepted: shown literally; no element injected, no script run)", "-", "-") for c in HOSTILE_PROMPTS]
    rows += [("workflow", c, *(_cell(x) for x in WORKFLOW_MESSAGES[c])) for c in WORKFLOW_CASES]
    lines = ["| case | kind | message (one line) | partial outputs | recovery |", "|---|---|---|---|---|"]
    lines += [f"| `{case}` | {kind} | {message} | {partial} | {recovery} |" for kind, case, message, partial, recovery in rows]
    return "\n".join(lines) + "\n"


def test_table_lists_every_case():
    """docs/troubleshooting.md holds the table generated from this file's cases, unchanged: regenerate it with
    `python tests/test_hardening.py` when a case changes."""
    cases = {*CONFIG_CASES, *YAML_CASES, *IMAGE_CASES, *CLI_CASES, *BACKEND_CASES, *HOSTILE_PROMPTS, *WORKFLOW_CASES}
    assert set(WORKFLOW_MESSAGES) == set(WORKFLOW_CASES)
    assert len(cases) >= 30
    assert matrix_table() in TROUBLESHOOTING.read_text(), "docs/troubleshooting.md is out of step: run python tests/test_hardening.py"


def test_matrix_is_linked_from_the_readme():
    assert "docs/troubleshooting.md" in (ROOT / "README.md").read_text()


if __name__ == "__main__":  # rewrite the table in docs/troubleshooting.md
    text = TROUBLESHOOTING.read_text()
    start, end = text.index("<!-- matrix -->") + len("<!-- matrix -->\n"), text.index("<!-- /matrix -->")
    TROUBLESHOOTING.write_text(text[:start] + matrix_table() + text[end:])
