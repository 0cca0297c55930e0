"""The post templates: rendered with a fake but complete context built from the real config.yaml, and once through
post.render end to end (tiny PNGs carrying the model description). No model runs; nothing is downloaded."""

import html
import math
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from diffusion_post import config as post_config
from diffusion_post import post
from diffusion_post.png import save_png

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"
CONFIG = ROOT / "config.yaml"
SPECIALS = "a *bold* <b>cat</b> | [x] _y_ `z` $5 #1"
CLAIM = re.compile(r"(?<!\bnot )\b(made|generated|produced|sampled|created|rendered)\s+(with|by|using|from)\s+(the\s+)?DeepFloyd",
                   re.IGNORECASE)  # "made with DeepFloyd", but not "not made by DeepFloyd"

IDEAL = {"backend": "ideal", "dataset": "noto-color-emoji (Debian fonts-noto-color-emoji)", "images": 2291,
         "text_encoder": "sentence-transformers/all-MiniLM-L6-v2", "temperature": 0.05, "stage": 1}
DEEPFLOYD = {"backend": "deepfloyd", "stage_1": "DeepFloyd/IF-I-L-v1.0", "stage_2": "DeepFloyd/IF-II-L-v1.0",
             "text_encoder": "DeepFloyd/IF-I-L-v1.0", "dtype": "float16"}


def load_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def specs_of(config: dict) -> dict[str, dict]:
    return {name: post_config.resolve(config, name) for name in post_config.figure_table(config)}


def fake_metrics(config: dict) -> dict:
    levels = config["figures"]["denoising"]["forward"]["timesteps"]
    methods = config["post"]["metrics"]["methods"]
    return {"timesteps": levels, "methods": {
        method: {"psnr": [30.0 - 5 * i - k + 0.123 for i in range(len(levels))],
                 "ssim": [0.9 - 0.2 * i - 0.05 * k + 0.0004 for i in range(len(levels))]}
        for k, method in enumerate(methods)}}


CHOICES = [{"prompt": "a high quality photo", "denoiser": "local", "captions": [
    {"caption": "photo of a cat", "images": 40, "weight": 0.306}, {"caption": "keycap: *", "images": 1, "weight": 0.042},
    {"caption": "stars", "images": 1, "weight": 0.0002}]}]


PROVENANCE = {"code": {"version": "0.1.0", "commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
              "environment": {"libraries": {"python": "3.11.7", "torch": "2.13.0"}, "torch_threads": 2,
                              "processor": "Some CPU (x86_64)", "device": "cpu"}}


def fake_record(config: dict, name: str, models: dict = IDEAL) -> dict:
    """What a figure's PNG would carry (build.make_result), without sampling."""
    spec = post_config.resolve(config, name)
    return {"figure": name, "config": post_config.place(config, name), **spec, "models": models,
            "timesteps_sampled": post_config.timesteps(spec), "input_files": {}, **PROVENANCE}


def context(config: dict, models: dict = IDEAL, metrics: dict | None | str = "fake", choices: list = CHOICES) -> dict:
    specs = specs_of(config)
    images = post.image_context(post_config.figure_files(config), post_config.figure_frames(config),
                                size_of=lambda f: (64 * (1 + len(f) % 3), 64))  # no files: made-up sizes
    records = {name: fake_record(config, name, models) for name in specs}
    provenance = {Path(f).name: post.how_made(f, records.get(post_config.figure_of(f), {}), {"seconds": 1.5, "loading": 0})
                  for f in post_config.figure_files(config)}
    return {
        "provenance": provenance,
        "post": config["post"], "seed": config["seed"], "defaults": config["defaults"], "inputs": config["inputs"],
        "fig": specs, **images, "frame_values": lambda spec: post_config.frame_values(spec, specs),
        "models": models, "backend_summary": post.backend_summary(models),
        "metrics": fake_metrics(config) if metrics == "fake" else metrics,
        "prompt_choices": choices if models.get("backend") == "ideal" else [], "records": records,
    }


def render(ctx: dict) -> str:
    return post.environment(TEMPLATES).get_template("post.md.j2").render(**ctx)


def split(text: str) -> tuple[dict, str]:
    """(front matter, body)."""
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL)
    assert match, "the post must start with a YAML front matter block"
    return yaml.safe_load(match.group(1)), match.group(2)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\**\s+|\n\s*\n", text) if s.strip()]


@pytest.fixture(scope="module")
def ctx() -> dict:
    return context(load_config())


@pytest.fixture(scope="module")
def text(ctx) -> str:
    return render(ctx)


def figure_urls(ctx: dict) -> dict[str, str]:
    """The URLs of the figure files, not of the interactive figures' frames (NAME/frame-K.png)."""
    return {file: url for file, url in ctx["url"].items() if "/" not in file}


IMAGE = re.compile(r'!\[[^\n]+\]\(((?:\.\./){3}assets/figures/[^)\s/]+)\)\{: (?:\.plot )?width="(\d+)" height="(\d+)"'
                   r'(?: data-frames="([^"]+)" data-frame-size="\d+ \d+" data-labels="([^"|]+)" '
                   r'data-control="(range|toggle)" data-name="(t|i_start|denoising step|view)")?\}')


def test_every_figure_file_is_shown_with_a_caption_and_its_size(ctx, text):
    lines = text.splitlines()
    for file, url in figure_urls(ctx).items():
        assert f"]({url}){{: " in text, f"{file} is not shown"
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert len(images) == len(figure_urls(ctx))
    for i in images:
        match = IMAGE.fullmatch(lines[i])
        assert match, lines[i]
        file = match.group(1).rsplit("/", 1)[1]
        assert (int(match.group(2)), int(match.group(3))) == tuple(ctx["size"][file])
        assert lines[i + 1] == "" and lines[i + 2].strip() and lines[i + 3] == "{: .caption}", lines[i:i + 4]


def test_interactive_figures_list_their_frames_and_labels(ctx, text):
    shown = {}
    for line in text.splitlines():
        match = IMAGE.fullmatch(line)
        if match and match.group(4):
            shown[match.group(1).rsplit("/", 1)[1][:-4]] = (match.group(4).split(" "), match.group(5).split(";"), match.group(6))
    assert set(shown) == set(ctx["frames"]) and len(shown) >= 13
    for name, (urls, labels, control) in shown.items():
        spec = ctx["fig"][name]
        assert urls == [ctx["url"][k] for k in ctx["frames"][name]]
        assert len(labels) == len(urls) == len(ctx["frame_values"](spec))
        assert control == ("toggle" if "views" in spec else "range")
    assert shown["forward"][1] == ["t = 0 (the original)", "t = 250", "t = 500", "t = 750"]
    assert shown["one_step"][1] == ["t = 250", "t = 500", "t = 750"]
    assert shown["iterative"][1] == ["t = 690", "t = 540", "t = 390", "t = 240", "t = 90"]
    assert shown["sdedit_test_image"][1][:2] == ["i_start = 1 (t = 960)", "i_start = 3 (t = 900)"]
    assert shown["sdedit_test_image"][1][-1] == "the original"
    words = {"identity": "as sampled", "flip": "upside down", "rotate_cw": "rotated 90° clockwise",
             "rotate_ccw": "rotated 90° counterclockwise"}
    anagrams = [name for name in shown if "views" in ctx["fig"][name]]
    assert len(anagrams) >= 4
    for name in anagrams:
        assert shown[name][1] == [words[view] for view in ctx["fig"][name]["views"]]


def test_figure_links_are_relative_to_the_posts_page(text):
    """The post's permalink is fixed, three folders deep, so ../../../ is the site's root under any base URL."""
    front, body = split(text)
    assert front["permalink"] == post.PERMALINK == "/:year/:month/:day/:title:output_ext"
    assert post.FIGURE_URL == "../../../assets/figures/{}"
    assert "](/" not in body and 'data-frames="/' not in body


def test_no_template_syntax_left(text):
    for token in ("<<", ">>", "<%", "%>", "<#", "#>"):
        assert token not in text, token


def test_front_matter(ctx, text):
    front, _ = split(text)
    assert front["layout"] == "post"
    assert front["require-mathjax"] is True
    assert front["title"] == ctx["post"]["title"]
    assert str(front["date"]) == str(ctx["post"]["date"])
    assert front["published"] is ctx["post"]["published"]
    assert front["tags"] == ctx["post"]["tags"]


def test_liquid_is_off_for_posts():
    """The post's TeX ({{, {%) is not Liquid: the site renders posts without Liquid."""
    site_config = yaml.safe_load((ROOT / "site" / "_config.yml").read_text())
    assert any(d.get("values", {}).get("render_with_liquid") is False for d in site_config.get("defaults", []))


def test_display_math_is_balanced_and_set_apart(text):
    _, body = split(text)
    assert body.count("$$") % 2 == 0
    lines = body.splitlines()
    fences = [i for i, line in enumerate(lines) if line.strip() == "$$"]
    assert fences and len(fences) % 2 == 0
    for start, end in zip(fences[::2], fences[1::2]):
        assert lines[start - 1] == "" and lines[end + 1] == "", lines[start - 1:end + 2]
        assert all("$$" not in line for line in lines[start + 1:end])
    for line in lines:  # inline math: $$...$$ pairs inside one line, never a single $ (kramdown mangles those)
        if line.strip() != "$$":
            assert line.count("$$") % 2 == 0, line
            assert "$" not in re.sub(r"\$\$.*?\$\$", "", line).replace("\\$", ""), line


def test_prompts_and_numbers_come_from_the_config():
    config = load_config()
    config["figures"]["denoising"]["forward"]["timesteps"] = [111, 333]
    config["figures"]["editing"]["sdedit_test_image"]["i_starts"] = [2, 4]
    config["figures"]["sampling"]["cfg_samples"]["guidance_scale"] = 5.5
    config["figures"]["hybrids"]["hybrid_rainy_day_dog"]["prompts"] = ["a zebra", "a lighthouse"]
    config["seed"] = 4242
    text = render(context(config))
    assert "$$t = 111, 333$$" in text
    assert "$$i_{\\text{start}} = 2, 4$$ ($$t = 930, 870$$)" in text
    assert "$$\\gamma = 5.5$$" in text
    assert "<span class=\"no-math\">“a zebra”</span>" in text and "<span class=\"no-math\">“a lighthouse”</span>" in text
    assert "seed 4242" in text


def test_prompts_are_escaped():
    config = load_config()
    config["figures"]["sampling"]["samples"]["prompt"] = SPECIALS
    config["figures"]["anagrams"]["anagram_citadel_castle"]["prompts"] = [SPECIALS, "a castle"]
    config["figures"]["hybrids"]["hybrid_rainy_day_dog"]["prompts"] = ["a dog", SPECIALS]
    text = render(context(config))
    assert SPECIALS not in text
    assert "<b>" not in text and "*bold*" not in text
    assert text.count(post.escape_markdown(SPECIALS)) >= 4  # captions and alt texts


def test_ideal_backend_is_not_called_deepfloyd(text):
    _, body = split(text)
    assert not [s for s in sentences(body) if CLAIM.search(s)]
    assert "not made by DeepFloyd IF" in body
    assert "`ideal`" in body and IDEAL["text_encoder"] in body
    assert "backend: {name: deepfloyd}" in body  # how to switch


def test_deepfloyd_backend_names_its_models():
    text = render(context(load_config(), models=DEEPFLOYD))
    _, body = split(text)
    assert [s for s in sentences(body) if CLAIM.search(s)]
    for key in ("stage_1", "stage_2"):
        assert f"`{DEEPFLOYD[key]}`" in body
    assert "ideal" not in body


def test_inpainting_says_what_the_ideal_backends_denoiser_leaves_at_the_mask():
    config = load_config()
    _, local = split(render(context(config)))
    config["backend"]["denoiser"]["editing"] = "exact"
    _, exact = split(render(context(config)))
    edge, original = "meets the kept region at a visible edge", "holds either the original again"
    assert edge in local and original not in local
    assert original in exact and edge not in exact


def test_intro_says_what_the_local_denoisers_options_do():
    local = {"window": [3, 15], "top": 930, "top_window": 3, "top_prior": 0.7, "prior_fade": 1.0}
    _, body = split(render(context(load_config(), models={**IDEAL, "local": local})))
    assert "where a window of 3 pixels leaves the layout to the prompt" in body
    assert "the caption's weight fading as the window shrinks" in body
    _, body = split(render(context(load_config(), models={**IDEAL, "local": {**local, "top": 1000, "prior_fade": 0}})))
    assert "leaves the layout to the prompt" not in body and "weight fading" not in body


def test_what_each_prompt_picks_in_the_set_is_listed_for_the_ideal_backend(text):
    _, body = split(text)
    assert "## What the prompts pick in the set" in body and "listed near the end, in *What the prompts pick" in body
    assert ("- <span class=\"no-math\">“a high quality photo”</span>, local denoiser: <span class=\"no-math\">photo of a cat "
            "(40 images, 30.6%); keycap: \\* (1 image, 4.2%); stars (1 image, under 0.1%)</span>\n") in body  # escaped
    _, body = split(render(context(load_config(), choices=[])))
    assert "What the prompts pick" not in body  # no section, and the intro does not point to one
    _, body = split(render(context(load_config(), models=DEEPFLOYD)))
    assert "What the prompts pick" not in body


def test_metrics_table(ctx, text):
    metrics = ctx["metrics"]
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(metrics["methods"])
    assert rows[0].count("PSNR") == rows[0].count("SSIM") == len(metrics["timesteps"])
    for method, values in metrics["methods"].items():
        row = next(r for r in rows if r.startswith(f"| {method} |"))
        for value in values["psnr"]:
            assert f"{value:.2f}" in row
        for value in values["ssim"]:
            assert f"{value:.3f}" in row
    first = next(iter(metrics["methods"]))  # the fake metrics make the first method best everywhere
    assert next(r for r in rows if r.startswith(f"| {first} |")).count("**") == 2 * 2 * len(metrics["timesteps"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_psnr_is_skimages_to_the_bit(dtype):
    """layout.psnr, written out to spare the build scikit-image's import of scipy.stats, gives the numbers of
    skimage.metrics.peak_signal_noise_ratio exactly (a mean taken in float32 would not)."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio

    from diffusion_post.layout import psnr

    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, (64, 64, 3)).astype(dtype)
    for noise in (1e-4, 0.05, 1.0):
        estimate = np.clip(reference + noise * rng.standard_normal(reference.shape), -1, 1).astype(dtype)
        assert psnr(reference, estimate, data_range=2) == peak_signal_noise_ratio(reference, estimate, data_range=2)


def test_the_metrics_job_does_not_import_scipy_stats(tmp_path):
    """The metrics job runs in the build's process, beside a sampling job that waits while an import holds the GIL:
    it imports what SSIM and the plot need, not scipy.stats (0.4 s, through skimage's peak_signal_noise_ratio)."""
    import subprocess
    import sys

    import torch

    script = """if True:
        import sys, torch
        from diffusion_post import layout
        from diffusion_post.images import save_result
        x = torch.linspace(-1, 1, 3 * 32 * 32).view(1, 3, 32, 32)
        save_result({"original": x, "timesteps": torch.tensor([250])}, "forward.safetensors", {"figure": "forward"})
        save_result({"images": 0.9 * x}, "blur.safetensors", {"figure": "blur"})
        table = layout.metrics("forward.safetensors", {"blur": "blur.safetensors"}, "metrics.json", "metrics.png")
        print(round(table["methods"]["blur"]["psnr"][0], 3), "scipy.stats" in sys.modules)
    """
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    mse = 0.01 * (torch.linspace(-1, 1, 3 * 32 * 32) ** 2).mean().item()  # (x - 0.9 x)^2
    assert run.stdout.split() == [f"{10 * math.log10(4 / mse):.3f}", "False"]


def test_compiled_templates_are_reused_across_processes_and_remade_when_edited(ctx, tmp_path, monkeypatch):
    """The post's compiled templates are kept in Jinja's per-user temporary folder: a second environment (a new
    process's) compiles nothing and renders the text a compile gives; an edited template, another version of Jinja
    or of post.py (the environment's options, which Jinja does not check) compile again, and the old files go; a
    cache file that cannot be read or written only means compiling again."""
    import shutil
    import tempfile

    import jinja2

    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    compile_source = jinja2.Environment.compile
    compiled = []
    monkeypatch.setattr(jinja2.Environment, "compile",
                        lambda self, source, name=None, *args, **kwargs: compiled.append(name) or
                        compile_source(self, source, name, *args, **kwargs))

    def render_from(folder, cached=True):
        env = post.environment(folder)
        if not cached:
            env.bytecode_cache = None
        return env.get_template("post.md.j2").render(**ctx)

    text = render_from(templates, cached=False)
    del compiled[:]
    assert render_from(templates) == text and "post.md.j2" in compiled
    cache = post.compiled_templates_cache()
    files = sorted(Path(cache.directory).glob(f"{post.COMPILED_PREFIX}*.cache"))
    assert isinstance(cache, jinja2.FileSystemBytecodeCache) and len(files) == len(set(compiled)) > 1

    del compiled[:]
    assert render_from(templates) == text and compiled == []

    post_template = templates / "post.md.j2"
    post_template.write_text(post_template.read_text().replace("layout: post", "layout: post\nedited: yes", 1))
    edited = render_from(templates)
    assert compiled == ["post.md.j2"] and edited.replace("edited: yes\n", "", 1) == text

    del compiled[:]
    monkeypatch.setattr(jinja2, "__version__", "0.0-another")
    assert render_from(templates) == edited and len(compiled) == len(files)
    assert not any(file.exists() for file in files)  # the other key's files are removed

    def fails(self, bucket):
        raise OSError(5, "Input/output error")

    del compiled[:]
    monkeypatch.setattr(jinja2.FileSystemBytecodeCache, "load_bytecode", fails)  # a cache file that cannot be read
    assert render_from(templates) == edited and len(compiled) == len(files)

    del compiled[:]
    monkeypatch.setattr(jinja2.FileSystemBytecodeCache, "dump_bytecode", fails)  # nor written (a full disk)
    monkeypatch.setattr(jinja2, "__version__", "0.0-a-third")
    assert render_from(templates) == edited and len(compiled) == len(files)


def test_no_metrics_no_table(ctx):
    text = render({**ctx, "metrics": None})
    assert not [line for line in text.splitlines() if line.startswith("|")]
    assert ctx["url"]["denoising_metrics.png"] in text


def test_post_without_optional_figures():
    """A user who removes figures still gets a post that shows every remaining one."""
    config = load_config()
    del config["post"]["metrics"]
    for section, name in [("denoising", "iterative"), ("denoising", "iterative_levels"), ("editing", "inpaint_own_image_1"),
                          ("anagrams", "anagram_citadel_castle_stage_2"), ("hybrids", "hybrid_gray_color"),
                          ("hybrids", "hybrid_gray_color_stage_2"), ("editing", "text_edit_test_image"),
                          ("editing", "text_edit_own_image_1"), ("editing", "text_edit_own_image_2")]:
        del config["figures"][section][name]
    ctx = context(config, metrics=None)
    assert "anagram_citadel_castle.gif" in ctx["url"]  # the stage-I anagram now has the animation
    text = render(ctx)
    for url in figure_urls(ctx).values():
        assert f"]({url})" in text
    assert "1.7.3" not in text and "denoising_metrics" not in text


def test_render_end_to_end(tmp_path):
    """post.render: figure PNGs carrying the model description, a metrics file, the check that every figure is shown."""
    import json

    config = load_config()
    specs = specs_of(config)
    files = []
    frames = {name: [str(tmp_path / f) for f in fs] for name, fs in post_config.figure_frames(config).items()}
    weights = {"a high quality photo": [{"caption": "camera", "images": 1, "weight": 0.99}]}
    for file in post_config.figure_files(config) + [f for fs in frames.values() for f in fs]:
        path = tmp_path / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".png":
            save_png(Image.new("RGB", (4, 4)), path, {"figure": path.stem, "models": IDEAL, "prompt_weights": weights})
        else:
            Image.new("RGB", (4, 4)).save(path)
        files.append(str(path))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(fake_metrics(config)))
    output = tmp_path / "post.md"
    post.render(config, specs, files[:len(post_config.figure_files(config))], metrics, TEMPLATES, output, frames=frames)
    text = output.read_text()
    assert 'width="4" height="4"' in text and "forward/frame-3.png" in text
    assert split(text)[0]["layout"] == "post"
    assert "not made by DeepFloyd IF" in text
    # every figure carries the same prompt_weights: one line per denoiser that the figures name, in their order
    lines = [line for line in text.splitlines() if line.startswith("- <span class=\"no-math\">“a high quality photo”")]
    assert lines == [f"- <span class=\"no-math\">“a high quality photo”</span>, {d} denoiser: <span class=\"no-math\">camera "
                     "(1 image, 99.0%)</span>" for d in ("local", "exact")]


def test_rarer_options_render():
    """Branches the shipped config does not take: three-band hybrids, other views, several samples, stage II of
    plain samples, a non-empty unconditional prompt, a stage-I figure with a strided schedule."""
    config = load_config()
    figures = config["figures"]
    figures["hybrids"]["hybrid_gray_color"].update(factorization="triple_band", prompts=["a skull", "a flower", "a cat"],
                                                   kernel_size=25, sigmas=[1.0, 2.0])
    figures["anagrams"]["anagram_citadel_castle"].update(views=["identity", "negate"], count=2)
    figures["anagrams"]["anagram_three_views"].update(views=["identity", "rotate_180", "flip"])
    figures["sampling"]["cfg_samples_stage_2"] = {"technique": "upsample", "source": "cfg_samples", "num_inference_steps": 10}
    figures["setup"]["setup_stage_1"].pop("num_inference_steps")
    config["defaults"]["unconditional_prompt"] = "blurry <low> quality"
    ctx = context(config)
    text = render(ctx)
    for url in figure_urls(ctx).values():
        assert f"]({url})" in text
    assert "the band between $$\\sigma = 1$$ and $$2$$ from <span class=\"no-math\">“a flower”</span>" in text
    assert "with its colours negated, showing <span class=\"no-math\">“a lithograph of a castle”</span>" in text and "for each of 2 samples" in text
    assert "rotated by 180°, showing <span class=\"no-math\">“a cat”</span>" in text
    assert "the unconditional prompt <span class=\"no-math\">“blurry &lt;low&gt; quality”</span>" in text
    assert "10 evenly spaced timesteps (900, 800, ..., 0)" in text
    assert "stage I runs the 34 timesteps 990, 960, ..., 0" in text


DISCLOSURE = re.compile(r'<details class="provenance no-math">\n<summary>How this figure was made</summary>\n<dl>\n'
                        r'((?:<dt>[^\n]*</dt><dd>[^\n]*</dd>\n)+)</dl>\n</details>\n\n')


def test_every_figure_says_how_it_was_made(ctx, text):
    """Right under each figure's caption, a collapsed disclosure: its rows (post.how_made), the last the command that
    rebuilds only that file; a blank line after it, so the markdown that follows starts afresh."""
    for file in figure_urls(ctx):
        after = text.split(f"/{file})", 1)[1].split("\n{: .caption}\n\n", 1)[1]
        match = DISCLOSURE.match(after)
        assert match, (file, after[:300])
        rows = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", match.group(1))
        assert rows == ctx["provenance"][file]
        assert rows[-1][0] == "Rebuild only it" and html.unescape(rows[-1][1]) == f"<code>snakemake --cores 1 figures/{file}</code>"
    assert text.count('<details class="provenance') == len(figure_urls(ctx))


def test_a_disclosure_is_read_from_the_record_and_inert():
    """The rows come from the record given (not from the config), every value shown literally: no HTML, markdown,
    Liquid or MathJax syntax survives; a local model folder by its name only."""
    odd = "my `odd` $x$ {{ page.title }}.png"
    record = {**fake_record(load_config(), "cfg_samples", models={**DEEPFLOYD, "stage_1": "/home/me/models/IF-I-L"}),
              "seed": 7, "prompt": SPECIALS, "input_files": {"image": {"file": odd, "sha256": "ab" * 32}}}
    rows = dict(post.how_made("figures/cfg_samples.png", record, {"seconds": 12.5, "loading": 10.25}))
    for value in rows.values():
        bare = re.sub(r"&#\d+;|</?code>", "", value)  # entities and the code spans the rows write
        assert not re.search(r"[<>&*_`$|\[\]{}#\\]", bare), value
    shown = {label: html.unescape(re.sub(r"</?code>", "", value)) for label, value in rows.items()}
    assert shown["Seed"] == "7" and shown["Defined in"] == "figures/sampling/cfg_samples of config.yaml"
    assert shown["Prompts"] == f"“{SPECIALS}”"
    assert shown["Input image"] == f"{odd}, sha256 {'ab' * 32}"
    assert shown["Models"] == "stage 1 IF-I-L, stage 2 DeepFloyd/IF-II-L-v1.0, text encoder DeepFloyd/IF-I-L-v1.0"
    assert shown["Code"] == f"diffusion_post 0.1.0, commit {PROVENANCE['code']['commit']}, its source as committed"
    assert shown["Libraries"] == "python 3.11.7, torch 2.13.0"
    assert (shown["Torch threads"], shown["Processor"]) == ("2", "Some CPU (x86_64)")
    assert shown["Time"] == "12.50 s (10.25 s of it loading the backend)"
    quick = dict(post.how_made("figures/blur.png", {"figure": "blur"}, {"seconds": 0.004, "loading": 0.0}))
    assert quick["Time"] == "under 0.01 s"  # not 0.00 s
    assert dict(post.how_made("figures/blur.png", {"figure": "blur"}, {"seconds": 0.006}))["Time"] == "0.01 s"
    assert shown["Guidance"] == "classifier-free, γ = 7, unconditional prompt “”"
    assert shown["Schedule"] == "start 990, stride 30: 34 steps, t = 990 to 0"
    assert shown["Rebuild only it"] == "snakemake --cores 1 figures/cfg_samples.png"
    bare = dict(post.how_made("figures/forward.png", {"figure": "forward", "code": {**PROVENANCE["code"], "commit": None,
                                                                                      "dirty": None}}, None))
    assert html.unescape(bare["Code"]) == "<code>diffusion_post 0.1.0</code>, not from a git checkout" and "Time" not in bare


def test_the_forward_process_and_blur_show_no_guidance_schedule_or_denoiser_they_did_not_use():
    """They call no denoiser: their parameters hold none of the defaults of sampling, their disclosure shows no
    guidance, schedule or denoiser, and the blur's caption does not say which denoiser made it (one-step's does)."""
    config, models = load_config(), {**IDEAL, "denoiser": "exact"}  # as the ideal backend describes itself
    for name in ("forward", "blur"):
        spec = post_config.resolve(config, name)
        assert not {"guidance_scale", "unconditional_prompt", "start", "stride", "thresholding", "denoiser"} & set(spec)
        rows = {label: html.unescape(re.sub(r"</?code>", "", value))
                for label, value in post.how_made(f"figures/{name}.png", fake_record(config, name, models), None)}
        assert "Guidance" not in rows and "Schedule" not in rows and rows["Backend"] == "ideal", rows
        assert "Models" not in rows  # the ideal backend's prompt encoder: not used
        deepfloyd = dict(post.how_made(f"figures/{name}.png", fake_record(config, name, DEEPFLOYD), None))
        assert html.unescape(re.sub(r"</?code>", "", deepfloyd["Models"])) == "stage 1 DeepFloyd/IF-I-L-v1.0"  # its schedule
    one_step = dict(post.how_made("figures/one_step.png", fake_record(config, "one_step", models), None))
    assert "Guidance" in one_step and "denoiser" in one_step["Backend"]
    _, body = split(render(context(config)))
    blur = re.search(r"Gaussian blur \(kernel \d+.*", body)[0]
    assert "Made by" not in blur
    assert re.search(r"Made by the (exact|local \(patch\)) denoiser", body)


def test_an_anagrams_caption_names_the_set_image_nearest_to_each_view():
    """From the figure's record (`looks_like`, each sample's views in order), in the post's words for the views; the
    section says which denoiser made the anagrams."""
    config = load_config()
    ctx = context(config)
    name = next(n for n, spec in ctx["fig"].items() if spec["technique"] == "anagram" and spec["views"] == ["identity", "flip"])
    ctx["records"][name]["looks_like"] = ["castle", "skull"]
    _, body = split(render(ctx))
    assert ('The set image nearest to each view: as sampled <span class="no-math">“castle”</span>, upside down '
            '<span class="no-math">“skull”</span>.') in body
    assert ".The set image" not in body and "</span>. The set image nearest to each view" in body  # a sentence of its own
    assert f"made by the {ctx['fig'][name]['denoiser']} denoiser" in body
    ctx["records"][name]["looks_like"] = ["skull", "castle"]  # the record, not the prompts, says it
    assert 'as sampled <span class="no-math">“skull”</span>' in split(render(ctx))[1]
