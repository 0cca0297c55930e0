"""config.yaml: validation (JSON schema, then the checks a schema cannot express) and each figure's resolved
parameters. Every problem is one line that says what is wrong and what to do."""

import functools
import math
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

from .backends.local_options import LocalOptions  # torch-free
from .spec import COMPONENTS, PROMPTLESS, STAGE_1_SIZE, timesteps

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
BUILTIN = "builtin:"
STAGE_2_SIZES = {"trained": 128}  # stage II's image side where it is not IF-II's 256
UPSAMPLABLE = ("text_to_image", "sample", "anagram", "hybrid")
CONTROL_NAMES = {"\n": "line feed", "\r": "carriage return", "\t": "tab", "\x1b": "escape", "\x00": "null"}
NO_SCHEDULE = ("forward", "blur", "one_step")  # techniques that never step along a schedule


class ConfigError(ValueError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key that a mapping repeats (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first != key_node.start_mark.line + 1:
                raise ConfigError(f"{self.name}: line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                                  f"(also on line {first}): rename or remove one")
        return super().construct_mapping(node, deep)


def load_yaml(path: Path | str) -> Any:
    """The YAML file at `path`, with duplicate keys and syntax errors reported in one line with their position."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        started = (f" ({error.context} on line {error.context_mark.line + 1})"
                   if error.context and error.context_mark and error.problem_mark else "")
        raise ConfigError(f"{path}: {where}: YAML syntax error: {error.problem or error.context}{started}: fix the file "
                          f"there") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a YAML text file ({str(error).splitlines()[0]})") from None


def load(path: Path | str) -> dict:
    config = load_yaml(path)
    check(config, Path(path).resolve().parent)
    return config


@functools.cache
def _schema(schema_path: Path) -> dict:
    """The schema, read once (by libyaml's parser where PyYAML has it: ~7x faster; the schema ships with the code, so
    it needs none of load_yaml's checks)."""
    return yaml.load(schema_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# The schema's `number` is a finite one: YAML's .nan, .inf and -.inf would pass every bound of JSON Schema.
_FINITE_NUMBERS = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "number", lambda _, value: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_FINITE_NUMBERS)


def check_schema(config: Any, schema_path: Path = SCHEMA) -> None:
    validator = _Validator(_schema(schema_path), format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ConfigError(f"config: at {where}: {error.message}")


def limits(config: dict) -> dict[str, int]:
    """config.yaml's `limits`, over their defaults in the schema: what a figure may ask for before it is refused as
    a probable typo (e.g. count: 100000)."""
    defaults = {key: value["default"] for key, value in _schema(SCHEMA)["properties"]["limits"]["properties"].items()}
    return defaults | config.get("limits", {})


def sampled_images(spec: dict) -> tuple[int, str] | None:
    """How many images a figure samples and the key that says so; None where its source's images decide (upsample,
    blur, one_step, iterative_levels) or it makes one (iterative, inpaint)."""
    key = {"text_to_image": "prompts", "sdedit": "i_starts", "forward": "timesteps", "sample": "count",
           "anagram": "count", "hybrid": "count"}.get(spec["technique"])
    if key is None:
        return None
    return (spec[key] if key == "count" else len(spec[key])), key


def figure_table(config: dict) -> dict[str, tuple[str, dict]]:
    """figure name -> (section, its own parameters), in the order of the config."""
    table: dict[str, tuple[str, dict]] = {}
    for section, figures in config["figures"].items():
        for name, spec in figures.items():
            if name in table:
                raise ConfigError(f"config: figure {name!r} appears in sections {table[name][0]!r} and {section!r}: rename one")
            table[name] = (section, spec)
    return table


def place(config: dict, name: str) -> str:
    """Where config.yaml defines a figure: figures/SECTION/NAME."""
    return f"figures/{figure_table(config)[name][0]}/{name}"


def resolve(config: dict, name: str) -> dict:
    """A figure's parameters: defaults, then (for stage II) its source's, then its own, plus the seed. A technique
    that calls no denoiser (PROMPTLESS: the forward process, blur) takes its own and the seed only: no guidance,
    schedule or denoiser is recorded, or shown under it in the post, that did not make it."""
    section, own = figure_table(config)[name]
    if own["technique"] in PROMPTLESS:
        return {"seed": config["seed"], **own}
    spec = {**config["defaults"], "seed": config["seed"], **section_denoiser(config, section)}
    if own["technique"] == "upsample":
        source = resolve(config, own["source"])
        spec.update({k: v for k, v in source.items() if k not in ("source", "num_inference_steps")})
        spec["source_technique"] = source["technique"]
    spec.update(own)
    return spec


PRESENTATION_KEYS = ("addition",)  # how the post presents a figure, not how its pixels are made


def sampling_spec(spec: dict) -> dict:
    """The parameters a figure's pixels depend on: its resolved spec without the presentation keys."""
    return {key: value for key, value in spec.items() if key not in PRESENTATION_KEYS}


def figure_files(config: dict) -> list[str]:
    """Every image file of the post, in config order: a PNG per figure, the iterative comparison panel, an
    animation per anagram (of its stage-II version when there is one), and the denoising-metrics plot."""
    specs = {name: resolve(config, name) for name in figure_table(config)}
    upsampled = {spec.get("source") for spec in specs.values() if spec["technique"] == "upsample"}
    files = []
    for name, spec in specs.items():
        files.append(f"figures/{name}.png")
        if spec["technique"] == "iterative":
            files.append(f"figures/{name}-comparison.png")
        final_anagram = spec["technique"] == "anagram" and name not in upsampled
        if final_anagram or spec.get("source_technique") == "anagram":
            files.append(f"figures/{name}.gif")
    if "metrics" in config["post"]:
        files.append("figures/denoising_metrics.png")
    return files



def shown_timesteps(spec: dict) -> list[int]:
    """The x_t an iterative-denoising figure shows: its start, then every `show_every`-th step above t = 0."""
    steps, i, every = timesteps(spec), spec["i_start"], spec["show_every"]
    return [steps[i]] + [t for t in steps[i + every::every] if t > 0]


def frame_values(spec: dict, specs: dict[str, dict]) -> list:
    """What each frame of an interactive figure stands for, in the order of its tiles; [] for a static figure.

    t for the forward process (0 is the original), one-step and iterative denoising; i_start for SDEdit
    (None is the original, its last tile); the view for anagrams (one frame per view, all samples side by side).
    """
    technique = spec["technique"]
    if technique == "forward":
        return [0, *spec["timesteps"]]
    if technique == "one_step":
        return list(specs[spec["source"]]["timesteps"])
    if technique == "iterative":
        return shown_timesteps(spec)
    if technique == "sdedit":
        return [*spec["i_starts"], None]
    if technique == "anagram" or spec.get("source_technique") == "anagram":
        return list(spec["views"])
    return []


def figure_of(path: str) -> str:
    """The figure an image file belongs to: figures/iterative-comparison.png, iterative.png, iterative/frame-2.png
    -> iterative (figure names are [a-z0-9_]+); figures/denoising_metrics.png -> denoising_metrics."""
    parts = Path(path).parts
    folder = parts[-2] if len(parts) > 1 and parts[-1].startswith("frame-") else None
    return folder or parts[-1].split(".")[0].split("-")[0]


def files_by_figure(config: dict) -> dict[str, list[str]]:
    """figure name -> every image file the post shows of it (figure_files, then its frames), in config order."""
    files: dict[str, list[str]] = {}
    for f in figure_files(config) + [f for fs in figure_frames(config).values() for f in fs]:
        files.setdefault(figure_of(f), []).append(f)
    return files


def figure_frames(config: dict) -> dict[str, list[str]]:
    """The frame files of each interactive figure, written by its layout job beside the figure:
    figure name -> [figures/NAME/frame-0.png, ...], in config order."""
    specs = {name: resolve(config, name) for name in figure_table(config)}
    frames = {name: [f"figures/{name}/frame-{k}.png" for k in range(len(frame_values(spec, specs)))]
              for name, spec in specs.items()}
    return {name: files for name, files in frames.items() if files}

def section_denoiser(config: dict, section: str) -> dict:
    """{"denoiser": exact|local} for the figures of `section` with the ideal backend (backend/denoiser: a map of
    section -> denoiser with a `default`), else {}. A figure's own `denoiser:`, or its source's, wins."""
    backend = config["backend"]
    if backend["name"] != "ideal":
        return {}
    choice = backend.get("denoiser", {})
    return {"denoiser": choice.get(section, choice.get("default", "exact"))}


# The backend settings a figure's pixels depend on (not where caches live): a sampling rule's params.
BACKEND_KEYS = {"ideal": ("name", "include_inputs", "images", "photos"),
                "deepfloyd": ("name", "stage_1", "text_encoder", "device"), "tiny": ("name", "device"),
                "trained": ("name", "weights", "device")}


def backend_params(config: dict, spec: dict, results: str = "results") -> dict:
    """The slice of `backend` that a figure depends on; stage II's model only for stage-II figures. For the ideal
    backend: its denoiser and that denoiser's settings, and the input images that join its set."""
    backend = config["backend"]
    keys = BACKEND_KEYS[backend["name"]] + (("stage_2",) if spec["technique"] == "upsample" else ())
    params = {key: backend[key] for key in keys if key in backend}
    if backend["name"] == "ideal":
        denoiser = spec.get("denoiser", "exact")
        params["denoiser"] = denoiser
        settings = {"exact": ("temperature",), "local": ("local",)}[denoiser]
        params.update({key: backend[key] for key in settings if key in backend})
        if backend.get("include_inputs"):
            params["input_images"] = input_images(config, results)
    return params


def figure_backend(config: dict, spec: dict, results: str = "results") -> dict:
    """What build.make_result loads for a figure: the backend section with the figure's slice resolved."""
    return {**config["backend"], **backend_params(config, spec, results)}


def input_images(config: dict, results: str = "results") -> list[list[str]]:
    """[path, caption] of every input image config.yaml names: they join the ideal backend's set, captioned by
    backend/input_captions where it names them."""
    from .data.inputs import input_caption

    captions = config["backend"].get("input_captions", {})
    return [[input_path(config, key, results), captions.get(key) or input_caption(value)] for key, value in config["inputs"].items()]


def input_path(config: dict, key: str, results: str = "results") -> str:
    """Where the input image `key` is read from: the user's file, or the shipped one written under results/."""
    value = config["inputs"][key]
    return f"{results}/inputs/{value[len(BUILTIN):]}.png" if value.startswith(BUILTIN) else value


def bitsandbytes_missing() -> str | None:
    """The one-line error of `t5: 8bit` without its optional dependency, or None when bitsandbytes is installed."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return ("backend/t5: 8bit needs bitsandbytes, which is not installed: pip install 'diffusion-post[t5-8bit]' "
                "(or pip install bitsandbytes), or set t5: cpu")
    return None


def looks_local(model_id: str) -> bool:
    """A model given as a local folder rather than a hub id (`org/name`): absolute, starting with . or ~, more or
    less than one level, or an existing folder."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") != 1 or Path(model_id).exists()


def input_files(config: dict, spec: dict, results: str = "results") -> dict[str, str]:
    """The image files a figure reads, by the spec key that names them: its input image, and a mask given as a
    file (an `inputs` key or a path; a box mask is no file)."""
    files = {"image": input_path(config, spec["image"], results)} if "image" in spec else {}
    if isinstance(spec.get("mask"), str):
        mask = spec["mask"]
        files["mask"] = input_path(config, mask, results) if mask in config["inputs"] else mask
    return files


def _walk(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(where, item) for every key and every value of the config, a key at the place of its mapping."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield where, key
            yield from _walk(item, f"{where}/{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}/{i}")
    else:
        yield where, value


def check_text(value: Any, where: str = "") -> None:
    """Every key and string of the config on one line: no control characters (a newline in a prompt would end
    its caption and start markdown of its own), no line or paragraph separators."""
    for place, item in _walk(value, where):
        if not isinstance(item, str):
            continue
        bad = next((c for c in item if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            name = CONTROL_NAMES.get(bad) or unicodedata.name(bad, "control character").lower()
            raise ConfigError(f"config: at {place or 'top level'}: {item[:40]!r} contains U+{ord(bad):04X} ({name}): "
                              f"write it on one line, without control characters")


def check_finite(value: Any, where: str = "") -> None:
    """Every number of the config finite, wherever it is (a key added later too): YAML reads .nan, .inf and -.inf
    (and 1.0e+400) as floats that pass every comparison a schema or a check makes, and would sample black images."""
    for place, item in _walk(value, where):
        if isinstance(item, float) and not math.isfinite(item):
            spelled = (".nan (not a number)" if math.isnan(item)
                       else f"{'-' if item < 0 else ''}.inf (infinite, or too large for a float)")
            raise ConfigError(f"config: at {place or 'top level'}: {spelled}: write a finite number there")


def check_input(key: str, value: str, root: Path) -> None:
    """An input image: a shipped one, or a file that opens and decodes completely."""
    if value.startswith(BUILTIN):
        from .data.inputs import DEFAULT_INPUTS

        if value[len(BUILTIN):] not in DEFAULT_INPUTS:
            raise ConfigError(f"config: inputs/{key}: no shipped image {value!r}: use one of "
                              + ", ".join(BUILTIN + n for n in DEFAULT_INPUTS) + " or a file path")
        return
    path = root / value
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "not found"
        raise ConfigError(f"config: inputs/{key}: image file {value!r} {what}: fix the path (relative to {root})")
    from .image_files import ImageFileError, read_rgb

    try:
        read_rgb(path)
    except ImageFileError as error:
        raise ConfigError(f"config: inputs/{key}: {error}") from None


def _check_sources(table: dict) -> None:
    """Every `source` names a figure, and no chain of sources comes back to where it started."""
    for name, (section, own) in table.items():
        chain = [name]
        while "source" in table[chain[-1]][1]:
            source = table[chain[-1]][1]["source"]
            if source not in table:
                raise ConfigError(f"config: figures/{table[chain[-1]][0]}/{chain[-1]}: source {source!r} is not a figure: "
                                  f"use one of {', '.join(table)}")
            if source in chain:
                raise ConfigError(f"config: figures/{section}/{name}: its sources go round in a loop "
                                  f"({' -> '.join(chain + [source])}): start the chain from a figure without source")
            chain.append(source)


def _check_metrics(config: dict, table: dict) -> None:
    metrics = config["post"].get("metrics")
    if metrics is None:
        return
    source = metrics["source"]
    if source not in table or table[source][1]["technique"] != "forward":
        forwards = [n for n, (_, own) in table.items() if own["technique"] == "forward"]
        raise ConfigError(f"config: post/metrics/source: {source!r} is not a forward figure: use one of "
                          f"{', '.join(forwards) or '(none: add a forward figure, or remove post/metrics)'}")
    for method, name in metrics["methods"].items():
        own = table.get(name, (None, {}))[1]
        if own.get("technique") not in ("blur", "one_step", "iterative_levels") or own.get("source") != source:
            fits = [n for n, (_, o) in table.items() if o.get("source") == source and o["technique"] in ("blur", "one_step", "iterative_levels")]
            raise ConfigError(f"config: post/metrics/methods/{method}: {name!r} is not a blur, one_step or iterative_levels "
                              f"figure of {source!r}: use one of {', '.join(fits) or '(none)'}")


def check(config: Any, root: Path = Path(".")) -> None:
    """Raise ConfigError with one line for the first problem found."""
    check_finite(config)
    check_schema(config)
    check_text(config)
    for key, value in config["inputs"].items():
        check_input(key, value, root)
    for key in config["backend"].get("input_captions", {}):
        if key not in config["inputs"]:
            raise ConfigError(f"config: backend/input_captions/{key}: not a key of inputs: use one of {', '.join(config['inputs'])}")
    try:
        LocalOptions.from_config(config["backend"].get("local", {}))
    except ValueError as error:
        raise ConfigError(f"config: backend/{error}") from None
    if config["backend"]["name"] == "deepfloyd" and not config["backend"].get("stage_1"):
        raise ConfigError("config: backend/stage_1: the deepfloyd backend needs a stage-I model id or folder")
    if config["backend"].get("t5") == "8bit" and (missing := bitsandbytes_missing()):
        raise ConfigError(f"config: {missing}")
    if config["backend"]["name"] == "deepfloyd":
        for key in ("stage_1", "stage_2", "text_encoder"):
            value = config["backend"].get(key)
            if value and looks_local(value) and not (root / Path(value).expanduser()).is_dir():
                raise ConfigError(f"config: backend/{key}: local model folder {value!r} not found: fix the path (relative "
                                  f"to {root}), or give a hub id such as DeepFloyd/IF-I-L-v1.0")

    table = figure_table(config)
    _check_sources(table)
    for name, (section, own) in table.items():
        where = f"config: figures/{section}/{name}"
        spec = resolve(config, name)
        if "image" in own and own["image"] not in config["inputs"]:
            raise ConfigError(f"{where}: image {own['image']!r} is not a key of inputs: add it there or use one of {', '.join(config['inputs'])}")
        _check_figure(where, spec, table, config, root)
    _check_metrics(config, table)


def _check_mask_file(where: str, mask: str, config: dict, root: Path) -> None:
    """A mask image: an `inputs` key (checked with the inputs) or a readable image file with some white in it."""
    if mask in config["inputs"]:
        value = config["inputs"][mask]
        if value.startswith(BUILTIN):
            raise ConfigError(f"{where}: mask {mask!r} is a shipped photo, not a mask: give a black-and-white image file "
                              f"(white = new content) or a box [top, bottom, left, right]")
        path = root / value
    else:
        path = root / mask
        if not path.is_file():
            raise ConfigError(f"{where}: mask {mask!r} is neither a key of inputs nor an image file: give a box "
                              f"[top, bottom, left, right], an inputs key or the path of a black-and-white image")
    from .image_files import ImageFileError, read_rgb

    try:
        gray = read_rgb(path).convert("L").resize((STAGE_1_SIZE, STAGE_1_SIZE))
    except ImageFileError as error:
        raise ConfigError(f"{where}: mask: {error}") from None
    if gray.getextrema()[1] <= 127:
        raise ConfigError(f"{where}: mask {mask!r} has no white pixel (white = new content): nothing would be inpainted")


def _over_limit(where: str, what: str, value: int, cause: str, config: dict) -> None:
    limit = limits(config)[what]
    if value > limit:
        raise ConfigError(f"{where}: {value} {what} ({cause}), over the limit of {limit} (limits/{what}, a guard against "
                          f"typos that start hours of sampling): use fewer, or raise it in config.yaml if you mean it: "
                          f"limits: {{{what}: {value}}}")


def _check_figure(where: str, spec: dict, table: dict, config: dict, root: Path = Path(".")) -> None:
    technique = spec["technique"]
    steps = timesteps(spec)
    images = sampled_images(spec)
    if images is not None:
        count, key = images
        _over_limit(where, "images", count, f"count {count}" if key == "count" else f"{count} {key}", config)
    if technique not in NO_SCHEDULE:
        _over_limit(where, "steps", len(steps), f"num_inference_steps {spec['num_inference_steps']}" if spec.get(
            "num_inference_steps") else f"start {spec['start']}, stride {spec['stride']}", config)
    if len(steps) < 2 and technique not in NO_SCHEDULE:
        if spec.get("num_inference_steps"):
            raise ConfigError(f"{where}: num_inference_steps {spec['num_inference_steps']} gives one timestep: use 2 or more")
        raise ConfigError(f"{where}: stride {spec['stride']} is larger than start {spec['start']}, so the schedule is the "
                          f"single timestep {steps[0]}: " + (f"use a stride of at most {spec['start']}" if spec["start"] else "use a start above 0"))
    if technique == "iterative_levels":
        lowest = min(table[spec["source"]][1].get("timesteps", [spec["stride"]]))
        if spec["stride"] > lowest:
            raise ConfigError(f"{where}: stride {spec['stride']} is larger than the noise level t = {lowest} it denoises "
                              f"from, which would be a single step: use a stride of at most {lowest}")
    for i in spec.get("i_starts", []) + ([spec["i_start"]] if "i_start" in spec else []):
        if i >= len(steps):
            raise ConfigError(f"{where}: i_start {i} is past the schedule of {len(steps)} timesteps "
                              f"({steps[0]}..{steps[-1]}): use 0..{len(steps) - 1}")
    if technique == "upsample":
        if table[spec["source"]][1]["technique"] not in UPSAMPLABLE:
            raise ConfigError(f"{where}: stage II upsamples a sampled figure ({', '.join(UPSAMPLABLE)}), not {spec['source']!r}")
        if config["backend"]["name"] == "deepfloyd" and not config["backend"].get("stage_2"):
            raise ConfigError(f"{where}: stage II needs backend/stage_2 set to a stage-II model")
    if technique in ("blur", "one_step", "iterative_levels") and table[spec["source"]][1]["technique"] != "forward":
        raise ConfigError(f"{where}: {technique} starts from the noisy images of a forward figure, not {spec['source']!r}")
    if isinstance(spec.get("mask"), str):
        _check_mask_file(where, spec["mask"], config, root)
    elif "mask" in spec:
        top, bottom, left, right = spec["mask"]
        if not (0 <= top < bottom <= STAGE_1_SIZE and 0 <= left < right <= STAGE_1_SIZE):
            raise ConfigError(f"{where}: mask {spec['mask']} must be [top, bottom, left, right] with "
                              f"0 <= top < bottom <= {STAGE_1_SIZE} and 0 <= left < right <= {STAGE_1_SIZE}")
    if "kernel_size" in spec and spec["kernel_size"] % 2 == 0:
        raise ConfigError(f"{where}: kernel_size {spec['kernel_size']} must be odd")
    side = STAGE_2_SIZES.get(config["backend"]["name"], 256) if technique == "upsample" else STAGE_1_SIZE
    if spec.get("kernel_size", 0) > 2 * side - 1:  # the blur pads by kernel_size // 2, reflecting inside the image
        raise ConfigError(f"{where}: kernel_size {spec['kernel_size']} is wider than the {side}-px image it blurs "
                          f"allows: use at most {2 * side - 1}")
    if technique == "anagram" and len(spec["views"]) != len(spec["prompts"]):
        raise ConfigError(f"{where}: anagram needs one prompt per view: got {len(spec['prompts'])} prompts, {len(spec['views'])} views")
    if technique == "hybrid":
        parts = len(COMPONENTS[spec["factorization"]])
        if parts != len(spec["prompts"]):
            raise ConfigError(f"{where}: factorization {spec['factorization']} has {parts} components: give {parts} prompts, got {len(spec['prompts'])}")
    if technique in ("sample", "anagram", "hybrid") and spec["count"] < 1:
        raise ConfigError(f"{where}: count must be at least 1")
