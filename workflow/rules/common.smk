# Config validation, the figure table, and the small helpers the rules share.
import sys
from pathlib import Path

from diffusion_post import config as post_config
from diffusion_post.build import make_result

try:
    post_config.check(config, Path(workflow.basedir))
except post_config.ConfigError as error:
    sys.exit(f"Error: {error}")

FIGURES = post_config.figure_table(config)  # name -> (section, own parameters)
SPECS = {name: post_config.resolve(config, name) for name in FIGURES}
PACKAGE = Path("src/diffusion_post")  # relative, so a moved or copied project keeps its build state
# Not used by sampling jobs: their edits must not rerun the models.
NOT_SAMPLING = {"layout.py", "png.py", "post.py", "site.py", "cli.py", "config.py", "project.py"}
OTHER_BACKENDS = {"ideal": {"deepfloyd.py", "tiny.py"}, "deepfloyd": {"ideal.py", "local.py", "photos.py", "tiny.py"},
                  "tiny": {"ideal.py", "local.py", "photos.py"}}


def code(*names):
    """Package modules as inputs, so that editing one reruns the jobs that run it."""
    return [str(PACKAGE / name) for name in names]


SAMPLING_CODE = sorted(
    str(p) for p in PACKAGE.rglob("*.py")
    if p.name not in NOT_SAMPLING | OTHER_BACKENDS[config["backend"]["name"]]
)


def figures_in(*sections):
    """A wildcard constraint matching exactly the figures of these sections."""
    return "|".join(name for name, (section, _) in FIGURES.items() if section in sections)


def sampling_inputs(wildcards):
    spec = SPECS[wildcards.figure]
    inputs = {"code": SAMPLING_CODE}
    if "image" in spec:
        inputs["image"] = post_config.input_path(config, spec["image"])
    if "source" in spec:
        inputs["source"] = f"results/{spec['source']}.safetensors"
    if config["backend"]["name"] == "ideal":  # the user's own images and the inputs are part of the ideal denoiser
        inputs["backend_images"] = [str(p) for folder in config["backend"].get("images", []) for p in sorted(Path(folder).rglob("*")) if p.is_file()]
        if config["backend"].get("include_inputs"):
            inputs["set_inputs"] = [path for path, _ in post_config.input_images(config)]
    return inputs


def sample_figure(wildcards, input, output, params):
    """The body of every sampling rule."""
    make_result(
        wildcards.figure, params.spec, post_config.figure_backend(config, params.spec),  # params.backend: the part that triggers reruns
        inputs={"image": input.image} if "image" in input.keys() else {},
        source=input.source if "source" in input.keys() else None,
        output=output[0],
    )


def figure_files():
    """Every image file of the post, in the order of the config."""
    return post_config.figure_files(config)
