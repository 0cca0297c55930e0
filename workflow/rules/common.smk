# Config validation, the figure table, and the small helpers the rules share.
import sys
from pathlib import Path

from diffusion_post import config as post_config  # torch-free: parsing the workflow never imports torch
from diffusion_post.backends.catalog import encodes_prompts, text_encoder_settings
from diffusion_post.spec import PROMPTLESS, encoded_prompts, prompt_digest
from diffusion_post.provenance import seconds_path

try:
    post_config.check(config, Path(workflow.basedir))
except post_config.ConfigError as error:
    sys.exit(f"Error: {error}")

FIGURES = post_config.figure_table(config)  # name -> (section, own parameters)
SPECS = {name: post_config.resolve(config, name) for name in FIGURES}
# Sampling jobs, longest first, so that short ones fill the cores at the end (1 core was idle ~4 s at a build's end,
# and the last job, 5 guided samples, ran alone): 2 for a figure another samples from (a stage II from its stage I:
# the chain of two jobs starts early), 1 for a stage II or a figure of several runs or images (1-4 s each), 0 for
# the rest (one run: inpainting, iterative denoising; under 0.5 s). The figures denoising_metrics reads get 1 at
# least, and so does that job: its imports (matplotlib, scikit-image: ~0.5 s) hold the GIL and stall the sampling
# job beside it (0.4 -> 1.7 s), better in the middle of the build, where the other core takes up the slack, than
# beside the last job.
SOURCES = {spec["source"] for spec in SPECS.values() if "source" in spec}
METRICS = config["post"].get("metrics") or {}
METRICS_FIGURES = {METRICS.get("source"), *METRICS.get("methods", {}).values()} - {None}


def sampling_priority(name, spec):
    if name in SOURCES:
        return 2
    several_runs = spec["technique"] not in PROMPTLESS and post_config.sampled_images(spec) is not None
    return int(spec["technique"] == "upsample" or several_runs or name in METRICS_FIGURES)


SAMPLING_PRIORITY = {name: sampling_priority(name, spec) for name, spec in SPECS.items()}
FRAMES = post_config.figure_frames(config)  # interactive figure -> its frame files
PACKAGE = Path("src/diffusion_post")  # relative, so a moved or copied project keeps its build state
PACKAGE_MODULES = sorted(PACKAGE.rglob("*.py"))
# Not used by sampling jobs: their edits must not rerun the models.
NOT_SAMPLING = {"layout.py", "png.py", "post.py", "site.py", "cli.py", "config.py", "project.py", "full_size.py",
                "preview.py", "verify.py"}
# A sampling job asks for a GPU only where its backend runs on one (the ideal backend never does; deepfloyd and
# tiny do unless device: cpu), so the same rules run on a CPU-only cluster node.
BACKEND = config["backend"]
GPU_PER_SAMPLING_JOB = int(BACKEND["name"] != "ideal" and BACKEND.get("device") != "cpu")
# The cascade backends' prompts are encoded first, one job per prompt (rule encode_prompt): record name -> prompt.
PROMPTS = {prompt_digest(p): p for spec in SPECS.values() for p in encoded_prompts(spec)} if encodes_prompts(BACKEND) else {}
# T5 runs on the GPU unless t5: cpu (the trained backend's sentence encoder runs on the CPU).
GPU_PER_ENCODE_JOB = int(GPU_PER_SAMPLING_JOB and BACKEND["name"] != "trained" and BACKEND.get("t5", "auto") != "cpu")
# The modules a figure's sampling never runs, by backend (the ideal backend: by denoiser), so that editing one
# reruns only the figures that run it.
IDEAL = {"ideal.py", "image_set.py", "minilm.py", "photos.py"}  # the ideal backend's set, prompt encoder, loader
EXACT, LOCAL = {"exact.py"}, {"local.py", "local_options.py"}  # its two denoisers
NOT_RUN = {"deepfloyd": IDEAL | EXACT | LOCAL | {"tiny.py", "trained.py"}, "tiny": IDEAL | EXACT | LOCAL | {"trained.py"},
           "trained": {"ideal.py", "photos.py", "tiny.py"} | EXACT | LOCAL,  # (its prompt encoder is image_set's)
           "exact": {"deepfloyd.py", "tiny.py", "trained.py"} | LOCAL, "local": {"deepfloyd.py", "tiny.py", "trained.py"} | EXACT}


def code(*names):
    """Package modules as inputs, so that editing one reruns the jobs that run it."""
    return [str(PACKAGE / name) for name in names]


def sampling_code(spec):
    """The package modules a figure's sampling runs (spec: its resolved parameters)."""
    runs = spec.get("denoiser", "exact") if config["backend"]["name"] == "ideal" else config["backend"]["name"]
    return [str(p) for p in PACKAGE_MODULES if p.name not in NOT_SAMPLING | NOT_RUN[runs] and p.parent.name != "training"]


def figures_in(*sections):
    """A wildcard constraint matching exactly the figures of these sections."""
    return "|".join(name for name, (section, _) in FIGURES.items() if section in sections)


def sampling_inputs(wildcards):
    spec = SPECS[wildcards.figure]
    inputs = {"code": sampling_code(spec), **post_config.input_files(config, spec)}
    if "source" in spec:
        inputs["source"] = f"results/{spec['source']}.safetensors"
    if PROMPTS:  # its prompts' embeddings, so its job runs after their encoding (and a new prompt reruns it)
        inputs["prompt_embeds"] = [prompt_record(p) for p in encoded_prompts(spec)]
    if config["backend"]["name"] == "trained":  # retrained weights rerun the figures (not SHIPPED.json, the output
        weights = Path(config["backend"].get("weights", "weights/trained"))  # of `train`: never train to sample)
        inputs["weights"] = sorted(str(p) for stage in ("stage_1", "stage_2") for p in (weights / stage).rglob("*") if p.is_file())
    if config["backend"]["name"] == "ideal":  # the user's own images and the inputs are part of the ideal denoiser
        inputs["backend_images"] = [str(p) for folder in config["backend"].get("images", []) for p in sorted(Path(folder).rglob("*")) if p.is_file()]
        if config["backend"].get("include_inputs"):
            inputs["set_inputs"] = [path for path, _ in post_config.input_images(config)]
    return inputs


def prompt_record(prompt):
    """The file the encode_prompt job of a prompt writes."""
    return f"results/prompt_embeds/{prompt_digest(prompt)}.json"


def sample_figure(wildcards, input, output, params):
    """The body of every sampling rule."""
    from diffusion_post.build import make_result

    make_result(
        wildcards.figure, params.spec, post_config.figure_backend(config, params.spec),  # params.backend: the part that triggers reruns
        inputs={key: input[key] for key in ("image", "mask") if key in input.keys()},
        source=input.source if "source" in input.keys() else None,
        output=output.result, place=params.place,
    )


def figure_files():
    """Every image file of the post, in the order of the config."""
    return post_config.figure_files(config)


def section_of(wildcards):
    """A figure's category in the report (snakemake --report): its section."""
    return FIGURES[wildcards.figure][0]


def made_by(wildcards, input):
    """A figure's labels in the report, read from its result: what made it, with which code and models."""
    from diffusion_post.images import load_result

    parameters = load_result(input.result)[1]
    return {"figure": wildcards.figure, "technique": parameters["technique"],
            "sampled by": f"rule sample_{FIGURES[wildcards.figure][0]}",
            "code": f"diffusion_post {parameters['code']['version']}", "models": str(parameters["models"])}


def result_files():
    """Every raw result: one per figure, and the denoising-metrics table."""
    return [f"results/{name}.safetensors" for name in FIGURES] + (["results/denoising_metrics.json"] if "metrics" in config["post"] else [])


def seconds_files():
    """The seconds each result's job took: its sidecar, written with it (provenance.seconds_path)."""
    return [str(seconds_path(f)) for f in result_files()]


def frame_files():
    """Every frame of the post's interactive figures."""
    return [f for files in FRAMES.values() for f in files]


def published(path):
    """Where the site serves a figure file: figures/X -> site/assets/figures/X. Each layout job writes its figures
    and their published copies (site.publish), so the site job has one output: a job's metadata records every input
    for every output, and with each copy an output of the site job that was ~130 x 150 checksums (1.1 s a build)."""
    return str(Path("site/assets") / path)
