"""config.yaml: validation (JSON schema, then the checks a schema cannot express) and each figure's resolved
parameters. Every problem is one line that says what is wrong and what to do."""

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .figures import components, timesteps

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
BUILTIN = "builtin:"
STAGE_1_SIZE = 64  # every backend's stage-I images are 64 x 64
UPSAMPLABLE = ("text_to_image", "sample", "anagram", "hybrid")


class ConfigError(ValueError):
    pass


def load(path: Path | str) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f)
    check(config, Path(path).resolve().parent)
    return config


def check_schema(config: Any, schema_path: Path = SCHEMA) -> None:
    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ConfigError(f"config: at {where}: {error.message}")


def figure_table(config: dict) -> dict[str, tuple[str, dict]]:
    """figure name -> (section, its own parameters), in the order of the config."""
    table: dict[str, tuple[str, dict]] = {}
    for section, figures in config["figures"].items():
        for name, spec in figures.items():
            if name in table:
                raise ConfigError(f"config: figure {name!r} appears in sections {table[name][0]!r} and {section!r}: rename one")
            table[name] = (section, spec)
    return table


def resolve(config: dict, name: str) -> dict:
    """A figure's parameters: defaults, then (for stage II) its source's, then its own, plus the seed."""
    section, own = figure_table(config)[name]
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
                "deepfloyd": ("name", "stage_1", "text_encoder", "device"), "tiny": ("name", "device")}


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
    """[path, caption] of every input image config.yaml names: they join the ideal backend's set."""
    from .data.inputs import input_caption

    return [[input_path(config, key, results), input_caption(value)] for key, value in config["inputs"].items()]


def input_path(config: dict, key: str, results: str = "results") -> str:
    """Where the input image `key` is read from: the user's file, or the shipped one written under results/."""
    value = config["inputs"][key]
    return f"{results}/inputs/{value[len(BUILTIN):]}.png" if value.startswith(BUILTIN) else value


def check(config: Any, root: Path = Path(".")) -> None:
    """Raise ConfigError with one line for the first problem found."""
    check_schema(config)
    for key, value in config["inputs"].items():
        if value.startswith(BUILTIN):
            from .data.inputs import DEFAULT_INPUTS

            if value[len(BUILTIN):] not in DEFAULT_INPUTS:
                raise ConfigError(f"config: inputs/{key}: no shipped image {value!r}: use one of "
                                  + ", ".join(BUILTIN + n for n in DEFAULT_INPUTS) + " or a file path")
        elif not (root / value).is_file():
            raise ConfigError(f"config: inputs/{key}: image file {value!r} not found: fix the path (relative to {root})")
    window = config["backend"].get("local", {}).get("window")
    if window and not (window[0] % 2 == 1 and window[1] % 2 == 1 and window[0] <= window[1]):
        raise ConfigError(f"config: backend/local/window {window}: give [small, large], both odd, small <= large")
    if config["backend"]["name"] == "deepfloyd" and not config["backend"].get("stage_1"):
        raise ConfigError("config: backend/stage_1: the deepfloyd backend needs a stage-I model id or folder")

    table = figure_table(config)
    for name, (section, own) in table.items():
        where = f"config: figures/{section}/{name}"
        spec = resolve(config, name) if own.get("source", name) in table else own
        if "source" in own and own["source"] not in table:
            raise ConfigError(f"{where}: source {own['source']!r} is not a figure: use one of {', '.join(table)}")
        if "image" in own and own["image"] not in config["inputs"]:
            raise ConfigError(f"{where}: image {own['image']!r} is not a key of inputs: add it there or use one of {', '.join(config['inputs'])}")
        _check_figure(where, spec, table, config)


def _check_figure(where: str, spec: dict, table: dict, config: dict) -> None:
    technique = spec["technique"]
    steps = timesteps(spec)
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
    if "mask" in spec:
        top, bottom, left, right = spec["mask"]
        if not (0 <= top < bottom <= STAGE_1_SIZE and 0 <= left < right <= STAGE_1_SIZE):
            raise ConfigError(f"{where}: mask {spec['mask']} must be [top, bottom, left, right] with "
                              f"0 <= top < bottom <= {STAGE_1_SIZE} and 0 <= left < right <= {STAGE_1_SIZE}")
    if "kernel_size" in spec and spec["kernel_size"] % 2 == 0:
        raise ConfigError(f"{where}: kernel_size {spec['kernel_size']} must be odd")
    if technique == "anagram" and len(spec["views"]) != len(spec["prompts"]):
        raise ConfigError(f"{where}: anagram needs one prompt per view: got {len(spec['prompts'])} prompts, {len(spec['views'])} views")
    if technique == "hybrid":
        parts = len(components(spec))
        if parts != len(spec["prompts"]):
            raise ConfigError(f"{where}: factorization {spec['factorization']} has {parts} components: give {parts} prompts, got {len(spec['prompts'])}")
    if technique in ("sample", "anagram", "hybrid") and spec["count"] < 1:
        raise ConfigError(f"{where}: count must be at least 1")
