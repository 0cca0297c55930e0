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

import contextlib
import hashlib
import html
import json
import re
from pathlib import Path

import jinja2

from PIL import Image

from .config import NO_SCHEDULE, figure_of, frame_values, shown_timesteps
from .spec import PROMPTLESS, timesteps
from .files import atomic_path
from .png import read_parameters
from .provenance import read_seconds

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


COMPILED_PREFIX = "diffusion-post-"  # the cache files' names in Jinja's folder: diffusion-post-KEY-TEMPLATE.cache


class CompiledTemplates(jinja2.FileSystemBytecodeCache):
    """Jinja's file cache of compiled templates, where a file that cannot be read or written (a full disk, a folder
    removed by a temp cleaner) only means compiling again."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except OSError:
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def compiled_templates_cache() -> jinja2.BytecodeCache | None:
    """The post's templates compiled once, not at every build (11 templates: 0.11 s -> 0.004 s; the same text), in
    Jinja's per-user temporary folder (which Jinja checks for its owner and mode). Jinja checks a file against its
    template's source only, not against the environment's options: the key names this file and Jinja's version, so
    that a change of either compiles again (and the files of other keys are removed). None where the folder cannot
    be made."""
    key = hashlib.sha256(Path(__file__).read_bytes() + jinja2.__version__.encode()).hexdigest()[:16]
    try:
        cache = CompiledTemplates(pattern=f"{COMPILED_PREFIX}{key}-%s.cache")
    except (OSError, RuntimeError):  # no safe temporary folder: compile every time
        return None
    for old in Path(cache.directory).glob(f"{COMPILED_PREFIX}*.cache"):
        if not old.name.startswith(f"{COMPILED_PREFIX}{key}-"):
            with contextlib.suppress(OSError):
                old.unlink()
    return cache


def environment(templates: Path | str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)), bytecode_cache=compiled_templates_cache(),
        optimized=False,  # no filter runs while compiling: the compiled code is the templates' and this file's
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
    env.filters["figure_of"] = figure_of
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


def prompt_choices(specs: dict[str, dict], records: dict[str, dict]) -> list[dict]:
    """What each prompt picks in the ideal backend's set, from the `prompt_weights` its figures carry (records: figure
    name -> its PNG's record, in the figures' order): once per prompt and denoiser, [{prompt, denoiser, captions:
    [{caption, images, weight}, ...]}, ...] (empty for the other backends)."""
    rows: dict[tuple[str, str | None], list[dict]] = {}
    for name, record in records.items():
        if specs.get(name, {}).get("denoiser"):  # (the forward process and blur call none)
            for prompt, captions in record.get("prompt_weights", {}).items():
                rows.setdefault((prompt, specs[name].get("denoiser")), captions)
    return [{"prompt": prompt, "denoiser": denoiser, "captions": captions} for (prompt, denoiser), captions in rows.items()]


REBUILD_COMMAND = "snakemake --cores 1 figures/{}"  # rebuilds only that file (and what it needs that is missing)
# Record keys the disclosure shows in rows of their own (how_made); every other parameter goes under "Parameters".
SHOWN_APART = {"figure", "config", "technique", "source", "source_technique", "methods", "prompt", "prompts",
               "unconditional_prompt", "guidance_scale", "seed", "start", "stride", "num_inference_steps",
               "timesteps_sampled", "denoiser", "models", "image", "input_files", "code", "environment", "panel",
               "frame", "prompt_weights", "looks_like"}


_INERT = re.compile(f"[&\"']|{_MARKDOWN_SPECIAL.pattern}")  # HTML's special characters and markdown's


def _html(value) -> str:
    """Text as inert HTML: every character that HTML, markdown or MathJax could read as syntax as a numeric
    entity, so it shows literally whether or not kramdown reads the block as markdown."""
    return _INERT.sub(lambda m: f"&#{ord(m.group(0))};", str(value))


def _code(value) -> str:
    return f"<code>{_html(value)}</code>"


def _quoted(prompt: str) -> str:
    return f"“{_html(prompt)}”"


def _value(value) -> str:
    """A parameter's value as the config writes it: true, null, [2, 20, 24, 42]."""
    return _code(json.dumps(value, ensure_ascii=False))


def duration(seconds: float) -> str:
    """Seconds as the disclosure shows them: two decimals, and 'under 0.01 s' for what would print as 0.00 s."""
    return f"{seconds:.2f} s" if seconds >= 0.005 else "under 0.01 s"


def how_made(file: str, record: dict, seconds: dict | None) -> list[tuple[str, str]]:
    """The rows of "How this figure was made" under an image of the post, (label, HTML), all from the figure's
    record (the PNG's own; an animation's is its figure's PNG) and the seconds its job took (its sidecar)."""
    rows = []  # what the figure is
    if "config" in record:
        rows.append(("Defined in", f"{_code(record['config'])} of config.yaml"))
    if "technique" in record:
        stage_2 = " (stage II)" if record["technique"] == "upsample" else ""
        rows.append(("Technique", _code(record["technique"]) + stage_2))
    if "source" in record:
        rows.append(("Made from", f"the result of figure {_code(record['source'])}"))
    if "methods" in record:
        rows.append(("Compares", ", ".join(f"{_html(m)} (figure {_code(f)})" for m, f in record["methods"].items())))
    prompts = record.get("prompts", [record["prompt"]] if "prompt" in record else [])  # how it was sampled
    if prompts:
        rows.append(("Prompts", ", ".join(_quoted(p) for p in prompts)))
    if "seed" in record:
        rows.append(("Seed", _code(record["seed"])))
    if record.get("timesteps_sampled") and record.get("technique") not in NO_SCHEDULE:
        steps = record["timesteps_sampled"]
        spacing = (f"num_inference_steps {record['num_inference_steps']}, evenly spaced" if record.get("num_inference_steps")
                   else f"start {record['start']}, stride {record['stride']}")
        rows.append(("Schedule", f"{spacing}: {len(steps)} steps, t = {steps[0]} to {steps[-1]}"))
    if "guidance_scale" in record:
        rows.append(("Guidance", "none: the conditional estimate alone" if record["guidance_scale"] is None else
                     f"classifier-free, γ = {record['guidance_scale']}, unconditional prompt "
                     f"{_quoted(record.get('unconditional_prompt', ''))}"))
    others = {k: v for k, v in record.items() if k not in SHOWN_APART}
    if others:
        rows.append(("Parameters", ", ".join(f"{_html(k)} {_value(v)}" for k, v in sorted(others.items()))))
    models = record.get("models")  # from what
    if models:
        promptless = record.get("technique") in PROMPTLESS  # the forward process and blur: the noise schedule only
        denoiser = f", its {_code(models['denoiser'])} denoiser" if models.get("denoiser") and not promptless else ""
        rows.append(("Backend", _code(models.get("backend")) + denoiser))
        ids = [f"{_html(key.replace('_', ' '))} {_code(model_name(models[key]))}"
               for key in (("stage_1",) if promptless else ("stage_1", "stage_2", "text_encoder")) if models.get(key)]
        if ids:
            rows.append(("Models", ", ".join(ids)))
    for key, file_record in record.get("input_files", {}).items():
        rows.append((f"Input {_html(key)}", f"{_code(file_record['file'])}, sha256 {_code(file_record['sha256'])}"))
    code = record.get("code")  # by which code, where, and how long it took
    if code:
        state = ("not from a git checkout" if code.get("commit") is None else f"commit {_code(code['commit'])}"
                 + {True: ", its source with uncommitted changes", False: ", its source as committed", None: ""}[code.get("dirty")])
        rows.append(("Code", f"{_code('diffusion_post ' + str(code.get('version')))}, {state}"))
    environment = record.get("environment")
    if environment:
        rows.append(("Libraries", ", ".join(f"{_html(name)} {_html(v)}" for name, v in environment["libraries"].items())))
        rows.append(("Torch threads", _html(environment["torch_threads"])))
        rows.append(("Processor", _html(environment["processor"])
                     + ("" if environment.get("device", "cpu") == "cpu" else f"; device {_html(environment['device'])}")))
    if seconds is not None:
        loading = f" ({seconds['loading']:.2f} s of it loading the backend)" if seconds.get("loading", 0) >= 0.01 else ""
        rows.append(("Time", f"{duration(seconds['seconds'])}{loading}"))
    rows.append(("Rebuild only it", _code(REBUILD_COMMAND.format(Path(file).name))))
    return rows


def disclosures(figure_files: list[str], records: dict[str, dict], seconds_files: list[str]) -> dict[str, list[tuple[str, str]]]:
    """figure file name ("forward.png") -> the rows of its disclosure (how_made), from the PNGs' records (records:
    file name -> record; an animation: its figure's PNG's)."""
    seconds = {Path(f).name.removesuffix(".seconds.json"): read_seconds(f) for f in seconds_files}
    return {Path(f).name: how_made(f, records.get(Path(f).name) or records[f"{figure_of(f)}.png"], seconds.get(figure_of(f)))
            for f in figure_files}


def render(config: dict, specs: dict[str, dict], figure_files: list[str], metrics: Path | str | None,
           templates: Path | str, output: Path | str, frames: dict[str, list[str]] | None = None,
           seconds: list[str] = ()) -> None:
    """Write the post. `figure_files` are the workflow's image files (figures/NAME.png|gif), `frames` the
    frame files of the interactive figures (config.figure_frames), `seconds` the sidecars with the seconds each
    figure's job took (provenance.seconds_path)."""
    records = {Path(f).name: read_parameters(f) for f in figure_files if f.endswith(".png")}  # each read once
    figure_records = {Path(name).stem: record for name, record in records.items() if Path(name).stem in specs}
    models = next(iter(figure_records.values()))["models"]
    images = image_context(figure_files, frames or {})
    urls = images["url"]
    context = {
        "post": config["post"], "seed": config["seed"], "defaults": config["defaults"], "inputs": config["inputs"],
        "fig": specs, **images, "frame_values": lambda spec: frame_values(spec, specs),
        "models": models, "backend_summary": backend_summary(models),
        "metrics": json.loads(Path(metrics).read_text()) if metrics else None,
        "prompt_choices": prompt_choices(specs, figure_records), "records": figure_records,
        "provenance": disclosures(figure_files, records, list(seconds)),
    }
    text = environment(templates).get_template("post.md.j2").render(**context)
    shown = set(re.findall(r"assets/figures/[^)\s\"']+", text))
    missing = sorted(url for url in urls.values() if url.split("../")[-1] not in shown)
    if missing:
        raise ValueError(f"the post template does not show {', '.join(missing)}: add them to templates/ or remove the figures from config.yaml")
    with atomic_path(output) as tmp:
        tmp.write_text(text)
