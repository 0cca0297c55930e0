r"""Render the markdown post from Jinja templates; every prompt and number comes from the config or results.

Jinja uses << >>, <% %>, <# #> so that its delimiters never clash with TeX or Liquid (the site turns Liquid
off for posts: render_with_liquid: false in site/_config.yml). Inline math is written $$...$$ inside a
paragraph, which kramdown passes through verbatim as \(...\).

Links to figures are relative to the post's page, whose permalink the post fixes (PERMALINK): the same built site
works at a server's root, under a GitHub Pages project path (/REPO/, the site's `baseurl`) and from any other
prefix, with no Liquid in the post. Every figure carries its width and height; an interactive figure carries its
frames (figures/NAME/frame-K.png) and their labels as data attributes, which site/assets/js/figures.js turns into
a slider or a view toggle.
"""

import html
import json
import re
from pathlib import Path

import jinja2

from PIL import Image

from .config import frame_values, shown_timesteps
from .spec import timesteps
from .files import atomic_path
from .png import read_parameters

PERMALINK = "/:year/:month/:day/:title:output_ext"  # the post's page, 3 folders below the site's root
FIGURE_URL = "../" * (PERMALINK.count("/") - 1) + "assets/figures/{}"  # relative to the post's page
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~$])")


def escape_markdown(text: str) -> str:
    """A prompt as literal text in markdown and HTML: escape HTML first, then markdown's special characters."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=True))


def code_span(text: str) -> str:
    """Text as a markdown code span that shows it literally: fenced by more backticks than it contains in a row,
    padded with spaces (which kramdown strips) so a backtick at either end cannot join the fence."""
    text = str(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"{fence}{text}{fence}"


def input_name(value: str) -> str:
    """What the post shows for an input image: `builtin:NAME`, or a file's name only (never a path of the machine
    that built the post)."""
    return value if value.startswith("builtin:") else Path(value).name


def model_name(value: str | None) -> str:
    """A model as the post shows it: a hub id (`org/name`) as it is, a local folder by its name only."""
    value = str(value)
    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not value.startswith(".") and not Path(value).exists()
    return value if hub_id else Path(value).name


def environment(templates: Path | str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        block_start_string="<%", block_end_string="%>",
        variable_start_string="<<", variable_end_string=">>",
        comment_start_string="<#", comment_end_string="#>",
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["md"] = escape_markdown
    env.filters["code"] = code_span
    env.filters["input_name"] = input_name
    # no-math: MathJax must not read a `$` in a prompt as the start of an equation
    env.filters["prompt"] = lambda text: f'<span class="no-math">“{escape_markdown(text)}”</span>'
    env.globals["schedule_of"] = timesteps
    env.globals["shown_timesteps"] = shown_timesteps
    env.globals["permalink"] = PERMALINK
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.filters["captions"] = caption_shares
    return env


def backend_summary(models: dict) -> str:
    """One sentence naming what made the figures; never calls an embedded-default figure DeepFloyd output."""
    name = models.get("backend")
    if name == "deepfloyd":
        stage_1, stage_2, encoder = (code_span(model_name(models.get(k))) for k in ("stage_1", "stage_2", "text_encoder"))
        return (f"DeepFloyd IF through diffusers: stage I {stage_1}, stage II {stage_2}, "
                f"prompt embeddings from {encoder} ({models.get('dtype')})")
    if name == "ideal":
        return (f"the embedded ideal backend, not DeepFloyd IF: the exact denoiser over {models.get('images')} "
                f"captioned images ({models.get('dataset')}), prompts matched by {models.get('text_encoder')}")
    if name == "tiny":
        return "tiny IF-shaped models with random weights (a test configuration: the pictures are noise)"
    if name == "trained":
        data = models.get("data") or {}
        return (f"the project's own small IF-shaped cascade, not DeepFloyd IF: two UNets trained by this project on "
                f"{data.get('count')} captioned emoji and photo crops (data version {data.get('version')}), prompts "
                f"embedded by {models.get('text_encoder', '').split('+')[0]}")
    raise ValueError(f"unknown backend {name!r} in the figures' metadata")


def image_size(path: Path | str) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def image_context(figure_files: list[str], frames: dict[str, list[str]], size_of=image_size) -> dict:
    """The template context about images, keyed by path under figures/ ("forward.png", "forward/frame-0.png"):
    `url` (relative to the post's page), `size` ((width, height) of each file), and `frames` (figure name -> its
    frames' keys)."""
    keys = {Path(f).name: f for f in figure_files}
    frame_keys = {name: [f"{name}/{Path(f).name}" for f in fs] for name, fs in frames.items()}
    keys.update({k: f for name, fs in frames.items() for k, f in zip(frame_keys[name], fs)})
    return {"url": {k: FIGURE_URL.format(k) for k in keys}, "size": {k: size_of(f) for k, f in keys.items()},
            "frames": frame_keys}


def caption_shares(captions: list[dict]) -> str:
    """[{caption, images, weight}, ...] -> 'camera (1 image, 4.2%); photo of a cat (40 images, 30.6%)', as markdown."""
    share = lambda w: f"{100 * w:.1f}%" if w >= 0.0005 else "under 0.1%"
    return "; ".join(f"{escape_markdown(c['caption'])} ({c['images']} image{'s' if c['images'] != 1 else ''}, "
                     f"{share(c['weight'])})" for c in captions)


def prompt_choices(specs: dict[str, dict], figure_files: list[str]) -> list[dict]:
    """What each prompt picks in the ideal backend's set, from the `prompt_weights` its figures carry: once per prompt
    and denoiser, in the figures' order, [{prompt, denoiser, captions: [{caption, images, weight}, ...]}, ...]
    (empty for the other backends)."""
    rows: dict[tuple[str, str | None], list[dict]] = {}
    for f in figure_files:
        name = Path(f).stem
        if f.endswith(".png") and name in specs:
            for prompt, captions in read_parameters(f).get("prompt_weights", {}).items():
                rows.setdefault((prompt, specs[name].get("denoiser")), captions)
    return [{"prompt": prompt, "denoiser": denoiser, "captions": captions} for (prompt, denoiser), captions in rows.items()]


def render(config: dict, specs: dict[str, dict], figure_files: list[str], metrics: Path | str | None,
           templates: Path | str, output: Path | str, frames: dict[str, list[str]] | None = None) -> None:
    """Write the post. `figure_files` are the workflow's image files (figures/NAME.png|gif), `frames` the
    frame files of the interactive figures (config.figure_frames)."""
    first_png = next(f for f in figure_files if f.endswith(".png") and Path(f).stem in specs)
    models = read_parameters(first_png)["models"]
    images = image_context(figure_files, frames or {})
    urls = images["url"]
    context = {
        "post": config["post"], "seed": config["seed"], "defaults": config["defaults"], "inputs": config["inputs"],
        "fig": specs, **images, "frame_values": lambda spec: frame_values(spec, specs),
        "models": models, "backend_summary": backend_summary(models),
        "metrics": json.loads(Path(metrics).read_text()) if metrics else None,
        "prompt_choices": prompt_choices(specs, figure_files),
    }
    text = environment(templates).get_template("post.md.j2").render(**context)
    shown = set(re.findall(r"assets/figures/[^)\s\"']+", text))
    missing = sorted(url for url in urls.values() if url.split("../")[-1] not in shown)
    if missing:
        raise ValueError(f"the post template does not show {', '.join(missing)}: add them to templates/ or remove the figures from config.yaml")
    with atomic_path(output) as tmp:
        tmp.write_text(text)
