"""What the workflow's sampling rules call."""

import hashlib
import sys
import time
from pathlib import Path

import torch

from . import __version__, figures
from .config import check_finite
from .spec import timesteps
from .backends import load_backend
from .files import atomic_path
from .images import load_image, load_result, save_result

SAMPLED_MESSAGE = "diffusion-post: sampled"


def make_result(name: str, spec: dict, backend: dict, inputs: dict[str, str], source: str | None, output: str,
                progress: bool = False) -> None:
    """Sample one figure: resolved parameters in, a results/<name>.safetensors out (written atomically); logs
    SAMPLED_MESSAGE with the seconds it took (a model load included, where this call made one). Refuses a number
    that is not finite among the parameters, and a result that is not finite (nothing is written then)."""
    start = time.perf_counter()
    check_finite({"figures": {name: spec}, "backend": backend})
    cascade = load_backend(backend)
    size = cascade.stage_1.sample_size
    ctx = figures.Context(
        cascade=cascade, name=name, spec=spec, progress=progress,
        images={key: load_image(path, size) for key, path in inputs.items()},
        source=load_result(source)[0] if source else None,
    )
    tensors = figures.make(ctx)
    broken = [key for key, tensor in tensors.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise ValueError(f"figure {name}: sampling gave NaN or infinite values in its {broken[0]}, so nothing was written: "
                         f"look for an extreme value among its parameters (guidance_scale, sigma, the backend's temperatures)")
    parameters = {"figure": name, **spec, "timesteps_sampled": timesteps(spec), "models": cascade.description,
                  "input_files": {key: file_record(path) for key, path in inputs.items()}, "diffusion_post": __version__,
                  "torch_threads": torch.get_num_threads()}  # CPU kernels' results depend on it (bench_reproducibility)
    weights_of = getattr(cascade.stage_1, "prompt_weights", None)  # the ideal backend: what each prompt picks in its set
    if weights_of is not None and ("prompt" in spec or "prompts" in spec):
        parameters["prompt_weights"] = weights_of(figures.prompts_of(spec))
    save_result(tensors, output, parameters)
    print(f"{SAMPLED_MESSAGE} {name} in {time.perf_counter() - start:.2f} s", file=sys.stderr, flush=True)


def file_record(path: str) -> dict:
    """Which file an input was and its content: the name only (figures are published; their metadata must not
    carry a path of the machine that made them) and the sha256 of its bytes."""
    return {"file": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def write_builtin_input(name: str, output: str) -> None:
    from .data.inputs import default_input

    with atomic_path(output) as tmp:
        default_input(name).save(tmp, format="PNG")

