"""Prompt embeddings cached on disk, one safetensors file per (text encoder, prompt).

The text encoder is loaded only when a prompt is not cached yet, so sampling runs never load T5-XXL again.
"""

import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

Encoder = Callable[[Sequence[str]], Tensor]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")


class PromptCache:
    """prompts -> (B, ...) embeddings; `make_encoder()` is called at most once, on the first miss."""

    def __init__(self, cache_dir: Path | str, encoder_name: str, make_encoder: Callable[[], Encoder]):
        self.folder = Path(cache_dir) / _slug(encoder_name)
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
        table = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in table.items()):
            raise ValueError(f"{path}: expected a dictionary of prompt -> tensor")
        for prompt, embeds in table.items():
            self.store(prompt, embeds if embeds.dim() == 3 else embeds[None])
        return len(table)
