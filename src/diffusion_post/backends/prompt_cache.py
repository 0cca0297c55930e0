"""Prompt embeddings cached on disk, one safetensors file per (text encoder, prompt).

The text encoder is loaded only when a prompt is not cached yet, so sampling runs never load T5-XXL again.
"""

import hashlib
import pickle
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

Encoder = Callable[[Sequence[str]], Tensor]
MAX_TOKENS = 77  # IF pads and truncates prompts to 77 T5 tokens
T5_WIDTHS = {"DeepFloyd/IF-I-XL-v1.0": 4096, "DeepFloyd/IF-I-L-v1.0": 4096, "DeepFloyd/IF-I-M-v1.0": 4096}  # T5-XXL


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")


class PromptCache:
    """prompts -> (B, ...) embeddings; `make_encoder()` is called at most once, on the first miss."""

    def __init__(self, cache_dir: Path | str, encoder_name: str, make_encoder: Callable[[], Encoder]):
        self.folder = Path(cache_dir) / _slug(encoder_name)
        self.encoder_name = encoder_name
        self.width = T5_WIDTHS.get(encoder_name)  # embedding width, where known without loading the encoder
        self.make_encoder = make_encoder
        self._encoder: Encoder | None = None

    def path(self, prompt: str) -> Path:
        return self.folder / f"{hashlib.sha256(prompt.encode()).hexdigest()[:24]}.safetensors"

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if not self.path(p).exists()]
        if missing:
            if self._encoder is None:
                self._encoder = self.make_encoder()
            for prompt, embeds in zip(missing, self._encoder(missing)):
                self.store(prompt, embeds[None])
        return torch.cat([load_file(self.path(p))["embeds"] for p in prompts])

    def store(self, prompt: str, embeds: Tensor) -> None:
        """Write one prompt's (1, ...) embedding atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(prompt)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        save_file({"embeds": embeds.detach().cpu().contiguous()}, str(tmp), metadata={"prompt": prompt})
        tmp.replace(target)

    def import_dict(self, path: Path | str) -> int:
        """Import a {prompt: (1, 77, D) tensor} file such as the course's prompt_embeds_dict.pth,
        read with weights_only=True so no arbitrary objects are unpickled. Returns the count imported."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about pickle protocols before it refuses a file
                table = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"{path}: refused: it holds Python objects besides tensors, and unpickling them could run "
                             f"code: save a {{prompt: tensor}} dictionary of plain tensors with torch.save") from None
        except Exception as error:  # other formats, truncated files: many exception types
            raise ValueError(f"{path}: not a torch.save file ({type(error).__name__}: {str(error)[:80]}): save a "
                             f"{{prompt: tensor}} dictionary with torch.save") from None
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in table.items()):
            raise ValueError(f"{path}: expected a dictionary of prompt -> tensor, got {type(table).__name__}")
        if not table:
            raise ValueError(f"{path}: the dictionary holds no prompts")
        shapes = {tuple(v.shape[-2:]) if v.dim() in (2, 3) else tuple(v.shape) for v in table.values()}
        for prompt, embeds in table.items():
            if not (embeds.is_floating_point() and (embeds.dim() == 2 or (embeds.dim() == 3 and embeds.shape[0] == 1))
                    and embeds.shape[-2] == MAX_TOKENS and len(shapes) == 1):
                raise ValueError(f"{path}: the embedding of {prompt[:40]!r} is {embeds.dtype} {tuple(embeds.shape)}: expected "
                                 f"float (1, {MAX_TOKENS}, D) or ({MAX_TOKENS}, D), one D for all prompts (got {sorted(shapes)})")
        if self.width is not None and shapes != {(MAX_TOKENS, self.width)}:
            raise ValueError(f"{path}: embeddings are {sorted(shapes)[0]} per prompt but {self.encoder_name} makes "
                             f"({MAX_TOKENS}, {self.width}): import embeddings of that text encoder")
        for prompt, embeds in table.items():
            self.store(prompt, embeds if embeds.dim() == 3 else embeds[None])
        return len(table)
