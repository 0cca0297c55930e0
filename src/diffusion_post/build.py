"""What the workflow's encoding and sampling rules call."""

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from . import figures, provenance
from .config import check_finite
from .spec import encoded_prompts, prompts_of, timesteps
from .backends import encode_prompts, load_backend
from .backends.catalog import encodes_prompts
from .files import atomic_path, sha256
from .provenance import SAMPLED_MESSAGE
from .images import load_image, load_result, save_result

# Intra-op threads of every sampling job. CPU kernels split their sums by thread, so a figure's bytes would depend on
# the machine's core count; with one thread they do not, and jobs run side by side instead (snakemake --cores). On
# this workload one thread also wastes less: small tensor ops spend more on waking OpenMP threads than they save.
SAMPLING_THREADS = 1
MEMORY_ADVICE = ("use a smaller stage I (backend/stage_1: DeepFloyd/IF-I-L-v1.0 or IF-I-M), set backend/t5: cpu or 8bit, "
                 "or import precomputed embeddings (diffusion-post import-embeddings) so that T5 never loads; the "
                 "README's 'GPU memory' table says what fits which card")


class OutOfMemory(RuntimeError):
    pass


@contextmanager
def out_of_memory_explained(doing: str) -> Iterator[None]:
    """A CUDA out-of-memory error as one line: what ran out, and what to change."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        said = str(error).splitlines()[0][:160] if str(error) else "CUDA out of memory"
        raise OutOfMemory(f"out of GPU memory while {doing} ({said}): {MEMORY_ADVICE}") from None


def encode_figure_prompts(spec: dict, backend: dict) -> None:
    """Encode the prompts of one figure before its sampling loads a UNet (for a whole build, the workflow's
    encode_prompt jobs do this), so that the text encoder is released first."""
    if encodes_prompts(backend):
        with out_of_memory_explained("encoding prompts"):
            encode_prompts(backend, encoded_prompts(spec))


def encode_prompt(prompt: str, backend: dict, output: str) -> None:
    """One prompt's embedding in the backend's cache (its text encoder loads on the first prompt not cached yet and
    stays loaded for the next ones, until a UNet loads), and a record of it at `output`: the encode_prompt job."""
    with out_of_memory_explained(f"encoding the prompt {prompt[:40]!r}"):
        cache = encode_prompts(backend, [prompt])
    embedding = cache.path(prompt)
    record = {"prompt": prompt, "text_encoder": cache.encoder_name, "embedding": embedding.name,
              "sha256": sha256(embedding)}
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def make_result(name: str, spec: dict, backend: dict, inputs: dict[str, str], source: str | None, output: str,
                progress: bool = False, place: str | None = None) -> None:
    """Sample one figure: resolved parameters in, a results/<name>.safetensors out (written atomically), with its
    record: the parameters, `place` (where config.yaml defines it, figures/SECTION/NAME), the code version and the
    environment (provenance.record). The seconds it took (a model load included, where this call made one) go to
    the sidecar provenance.seconds_path(output) and to the log (SAMPLED_MESSAGE). Refuses a number that is not finite
    among the parameters, and a result that is not finite (nothing is written then)."""
    start = time.perf_counter()
    torch.set_num_threads(SAMPLING_THREADS)
    check_finite({"figures": {name: spec}, "backend": backend})
    with out_of_memory_explained(f"sampling the figure {name}"):
        cascade = load_backend(backend)
        loading = time.perf_counter() - start
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
    parameters = {"figure": name, **({"config": place} if place else {}), **spec, "timesteps_sampled": timesteps(spec),
                  "models": cascade.description, "input_files": {key: file_record(path) for key, path in inputs.items()},
                  **provenance.record(getattr(cascade.stage_1, "device", "cpu"))}
    weights_of = getattr(cascade.stage_1, "prompt_weights", None)  # the ideal backend: what each prompt picks in its set
    if weights_of is not None and ("prompt" in spec or "prompts" in spec):
        parameters["prompt_weights"] = weights_of(prompts_of(spec))
    looks_like = getattr(cascade.stage_1, "looks_like", None)  # the ideal backend: the set image each view is nearest to
    if looks_like is not None and "anagram" in (spec["technique"], spec.get("source_technique")):
        parameters["looks_like"] = looks_like(tensors["images"])  # its tiles: each sample's views, in order
    save_result(tensors, output, parameters)
    seconds = time.perf_counter() - start
    provenance.write_seconds(provenance.seconds_path(output), seconds, loading)
    print(f"{SAMPLED_MESSAGE} {name} in {seconds:.2f} s", file=sys.stderr, flush=True)


def file_record(path: str) -> dict:
    """Which file an input was and its content: the name only (figures are published; their metadata must not
    carry a path of the machine that made them) and the sha256 of its bytes."""
    return {"file": Path(path).name, "sha256": sha256(path)}


def write_builtin_input(name: str, output: str) -> None:
    from .data.inputs import default_input

    with atomic_path(output) as tmp:
        default_input(name).save(tmp, format="PNG")

