"""The `trained` backend: the project's own small IF-shaped cascade (stage I 64 px, stage II 64 -> 128 px), trained
by `snakemake train` (src/diffusion_post/training/) and shipped as a folder in the hub layout, so it loads through
`load_cascade`, the code that loads DeepFloyd IF and the tiny models. Prompts are encoded by the sentence encoder
of the ideal backend (all-MiniLM-L6-v2, one 384-d vector per prompt, given to the UNets as a sequence of one)."""

import json
from pathlib import Path

from ..denoiser import Cascade
from ..files import sha256
from .deepfloyd import ModelUnavailable, load_cascade
from .image_set import ENCODER_NAME, minilm_encoder
from .prompt_cache import Encoder, PromptCache

WEIGHTS = Path("weights/trained")  # committed with the project; relative to the project root, like results/
NOT_SHIPPED = "no trained weights shipped yet: run `snakemake train` on a GPU (see README)"


class WeightsMissing(ModelUnavailable):
    pass


def sentence_tokens() -> Encoder:
    """prompts -> (B, 1, 384): the ideal backend's MiniLM vector of each prompt's content as a one-token sequence
    (the empty prompt -> zeros, what caption dropout trained as the unconditional input)."""
    encode = minilm_encoder()
    return lambda prompts: encode(prompts)[:, None, :]


def check_weights(folder: Path) -> dict:
    """SHIPPED.json of `folder`, after checking every weight file against its sha256. One-line errors."""
    shipped_file = folder / "SHIPPED.json"
    if not shipped_file.is_file():
        raise WeightsMissing(NOT_SHIPPED if folder == WEIGHTS else f"no trained weights in {folder} (no SHIPPED.json): "
                             f"run `snakemake train` on a GPU (see README) or point backend/weights at its output")
    shipped = json.loads(shipped_file.read_text())
    for name, digest in shipped["sha256"].items():
        if not (folder / name).is_file() or sha256(folder / name) != digest:
            raise WeightsMissing(f"{folder / name}: missing or not the file SHIPPED.json lists (sha256): "
                                 f"restore it from git (`git checkout -- {folder}`) or retrain")
    return shipped


def trained_prompt_cache(cache_dir: Path | str = ".cache/prompt_embeds") -> PromptCache:
    return PromptCache(cache_dir, f"{ENCODER_NAME}+one-token", sentence_tokens, release_after_call=True)


def load_trained(folder: Path | str | None = None, *, device: str | None = None,
                 cache_dir: Path | str = ".cache/prompt_embeds", prompts: PromptCache | None = None) -> Cascade:
    folder = Path(folder) if folder else WEIGHTS
    shipped = check_weights(folder)
    cascade = load_cascade(str(folder / "stage_1"), str(folder / "stage_2"), device=device, backend="trained",
                           prompts=prompts or trained_prompt_cache(cache_dir))
    cascade.description["data"] = shipped["data"]
    cascade.description["weights_sha256"] = {k: v[:16] for k, v in shipped["sha256"].items()}
    return cascade
