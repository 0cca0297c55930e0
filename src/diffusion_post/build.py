"""What the workflow's sampling rules call."""

import hashlib
import sys
import time
from pathlib import Path

from . import figures, provenance
from .spec import timesteps
from .backends import load_backend
from .images import atomic_path, load_image, load_result, save_result

SAMPLED_MESSAGE = "diffusion-post: sampled"


def make_result(name: str, spec: dict, backend: dict, inputs: dict[str, str], source: str | None, output: str,
                progress: bool = False, place: str | None = None) -> None:
    """Sample one figure: resolved parameters in, a results/<name>.safetensors out (written atomically), with its
    record: the parameters, `place` (where config.yaml defines it, figures/SECTION/NAME), the code version and the
    environment (provenance.record). The seconds it took (a model load included, where this call made one) go to
    the sidecar provenance.seconds_path(output) and to the log (SAMPLED_MESSAGE)."""
    start = time.perf_counter()
    cascade = load_backend(backend)
    loading = time.perf_counter() - start
    size = cascade.stage_1.sample_size
    ctx = figures.Context(
        cascade=cascade, name=name, spec=spec, progress=progress,
        images={key: load_image(path, size) for key, path in inputs.items()},
        source=load_result(source)[0] if source else None,
    )
    tensors = figures.make(ctx)
    parameters = {"figure": name, **({"config": place} if place else {}), **spec, "timesteps_sampled": timesteps(spec),
                  "models": cascade.description, "input_files": {key: file_record(path) for key, path in inputs.items()},
                  **provenance.record(getattr(cascade.stage_1, "device", "cpu"))}
    weights_of = getattr(cascade.stage_1, "prompt_weights", None)  # the ideal backend: what each prompt picks in its set
    if weights_of is not None and ("prompt" in spec or "prompts" in spec):
        parameters["prompt_weights"] = weights_of(figures.prompts_of(spec))
    save_result(tensors, output, parameters)
    seconds = time.perf_counter() - start
    provenance.write_seconds(provenance.seconds_path(output), seconds, loading)
    print(f"{SAMPLED_MESSAGE} {name} in {seconds:.2f} s", file=sys.stderr, flush=True)


def file_record(path: str) -> dict:
    """Which file an input was and its content: the name only (figures are published; their metadata must not
    carry a path of the machine that made them) and the sha256 of its bytes."""
    return {"file": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def write_builtin_input(name: str, output: str) -> None:
    from .data.inputs import default_input

    with atomic_path(output) as tmp:
        default_input(name).save(tmp, format="PNG")

