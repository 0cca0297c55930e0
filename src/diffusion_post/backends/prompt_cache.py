"""Prompt embeddings cached on disk, one safetensors file per (text encoder, prompt).

The text encoder is loaded only when a prompt is not cached yet, so a warm cache never loads T5-XXL. The workflow
encodes every prompt of a build first (rule encode_prompt), then releases the encoder before any UNet loads.
"""

import gc
import pickle
import re
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..files import atomic_path
from ..spec import prompt_digest
from .catalog import IF_T5

Encoder = Callable[[Sequence[str]], Tensor]
MAX_TOKENS = 77  # IF pads and truncates prompts to 77 T5 tokens
T5_WIDTHS = {IF_T5: 4096}  # embedding widths known without loading the encoder


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")


def free_memory() -> None:
    """Return what released models held: collect their reference cycles, and hand cached CUDA blocks back."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class PromptCache:
    """prompts -> (B, ...) embeddings, read from disk; `make_encoder()` is called on a miss. Safe to share between
    threads (Snakemake's jobs with force-use-threads): one lock guards the encoder and the writes.

    `release_after_call`: an encoder that a call loaded is released when the call returns (a cascade's cache: the
    sampling jobs never keep T5); without it, it stays loaded (the ideal backend's small sentence encoder)."""

    def __init__(self, cache_dir: Path | str, encoder_name: str, make_encoder: Callable[[], Encoder],
                 release_after_call: bool = False):
        self.folder = Path(cache_dir) / _slug(encoder_name)
        self.encoder_name = encoder_name
        self.width = T5_WIDTHS.get(encoder_name)  # embedding width, where known without loading the encoder
        self.make_encoder = make_encoder
        self.release_after_call = release_after_call
        self._encoder: Encoder | None = None
        self._lock = threading.RLock()

    def path(self, prompt: str) -> Path:
        return self.folder / f"{prompt_digest(prompt)}.safetensors"

    def encode(self, prompts: Sequence[str]) -> None:
        """Encode and store the prompts not cached yet. The encoder loads on the first miss and stays loaded for
        the next prompts, until release()."""
        with self._lock:
            missing = [p for p in dict.fromkeys(prompts) if not self.path(p).exists()]
            if not missing:
                return
            if self._encoder is None:
                self._encoder = self.make_encoder()
            for prompt, embeds in zip(missing, self._encoder(missing)):
                self.store(prompt, embeds[None])

    def release(self) -> bool:
        """Drop the encoder (no reference to it is left here) and free its memory; True if one was loaded."""
        with self._lock:
            loaded, self._encoder = self._encoder is not None, None
            if loaded:
                free_memory()
            return loaded

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        """(len(prompts), ...) embeddings; the prompts not encoded yet are encoded first."""
        with self._lock:
            loaded = self._encoder is not None
            self.encode(prompts)
            if self.release_after_call and not loaded and self._encoder is not None:
                self.release()
        return torch.cat([load_file(self.path(p))["embeds"] for p in prompts])

    def store(self, prompt: str, embeds: Tensor) -> None:
        """Write one prompt's (1, ...) embedding atomically."""
        with atomic_path(self.path(prompt)) as tmp:
            save_file({"embeds": embeds.detach().cpu().contiguous()}, str(tmp),
                      metadata={"prompt": prompt, "text_encoder": self.encoder_name})

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
