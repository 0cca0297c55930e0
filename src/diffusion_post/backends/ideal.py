"""The ideal backend, the embedded default: training-free denoisers over a captioned image set (image_set.py), the
exact MMSE denoiser (exact.py) or the local patch posterior (local.py), chosen per figure; offline, on the CPU."""

from pathlib import Path
from typing import Callable, Sequence

from ..denoiser import Cascade, StageTwo
from .exact import ExactDenoiser, ExactUpsampler
from .image_set import ENCODER_NAME, TEXT_ENCODER, Encoder, cosine_alphas_cumprod, image_set_of, minilm_encoder
from .local import LocalDenoiser, LocalUpsampler
from .local_options import LocalOptions


def load_ideal(cache_dir: Path | str = ".cache", images: Sequence[Path | str] = (), emoji: bool = True, photos: bool = False,
               files: Sequence[tuple[Path | str, str]] = (), temperature: float = 0.02, prune_margin: float = 50.0,
               denoiser: str = "exact", local: dict | None = None,
               encoder: Callable[[], Encoder] = minilm_encoder, encoder_name: str = ENCODER_NAME) -> Cascade:
    """The ideal backend: stage I at 64 px and stage II at 256 px over the Noto emoji (`emoji`), crops of sample
    photos (`photos`), the captioned images of the folders `images` (see data.emoji_set.load_folder) and single
    captioned image `files` ((path, caption) pairs: the post's inputs). `temperature` sets how sharply a prompt
    selects captions; `encoder` makes the prompt encoder and `encoder_name` names its caches.
    denoiser: "exact" (the MMSE denoiser of this module) or "local" (backends.local, options `local`)."""
    if denoiser not in ("exact", "local"):
        raise ValueError(f"unknown ideal denoiser {denoiser!r}: use exact or local")
    files = tuple((str(path), caption) for path, caption in files)
    image_set, prompts, dataset = image_set_of(Path(cache_dir), tuple(Path(f) for f in images), emoji, photos, files,
                                               temperature, encoder, encoder_name)
    description = {"backend": "ideal", "denoiser": denoiser, "dataset": " + ".join(dataset), "images": len(image_set),
                   "text_encoder": TEXT_ENCODER, "temperature": temperature}
    lowres_alphas_cumprod = cosine_alphas_cumprod()  # IF's image-noising scheduler uses the same cosine schedule
    if denoiser == "local":
        options = LocalOptions.from_config(local or {})
        description.update(temperature=options.temperature, local=dict(options.__dict__, window=list(options.window)))
        stage_1 = LocalDenoiser(image_set, prompts, {**description, "stage": 1}, options)
        stage_2 = LocalUpsampler(image_set, prompts, {**description, "stage": 2}, lowres_alphas_cumprod, options)
    else:
        stage_1 = ExactDenoiser(image_set, prompts, {**description, "stage": 1})
        stage_2 = ExactUpsampler(image_set, prompts, {**description, "stage": 2}, lowres_alphas_cumprod, prune_margin)
    return Cascade(stage_1, StageTwo(stage_2, lowres_alphas_cumprod), description)
