"""Backends behind the denoiser interface, chosen by the `backend` section of config.yaml.

Every backend but `ideal` is a cascade of IF-shaped UNets whose prompts a text encoder embeds. Its prompts are
encoded first (encode_prompts, the workflow's encode_prompt jobs), and its text encoder is released before its
first UNet loads (load_backend), so the two never share the GPU."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .catalog import BACKENDS, encodes_prompts, text_encoder_settings

if TYPE_CHECKING:  # torch-free at import: the config check reads backends.local_options while the workflow parses
    from ..denoiser import Cascade
    from .prompt_cache import PromptCache

_LOADED: dict[str, Cascade] = {}
_USED: set[str] = set()  # the keys of _LOADED that load_backend served since the last forget() (in this build)
_PROMPT_CACHES: dict[str, PromptCache] = {}
_LOCK = threading.Lock()  # jobs running as threads of one Snakemake process share one load
_PROMPTS_LOCK = threading.Lock()
_TINY_LOCK = threading.Lock()
LOAD_MESSAGE = "diffusion-post: loading backend"
def prompt_cache_of(backend: dict) -> PromptCache:
    """The backend's prompt-embedding cache, one per process and text encoder, shared by its encode jobs and its
    cascade. Its encoder loads on the first prompt not cached yet."""
    key = json.dumps({**text_encoder_settings(backend), **{k: backend.get(k) for k in ("cache_dir", "device", "t5")}},
                     sort_keys=True)
    with _PROMPTS_LOCK:
        if key not in _PROMPT_CACHES:
            _PROMPT_CACHES[key] = _prompt_cache(backend)
        return _PROMPT_CACHES[key]


def _prompt_cache(backend: dict) -> PromptCache:
    folder = Path(backend.get("cache_dir", ".cache")) / "prompt_embeds"
    if backend["name"] == "trained":
        from .trained import trained_prompt_cache

        return trained_prompt_cache(folder)
    from .deepfloyd import t5_prompt_cache

    options = {"device": backend.get("device"), "cache_dir": folder, "t5": backend.get("t5", "auto"),
               "backend": backend["name"]}
    if backend["name"] == "tiny":
        return t5_prompt_cache(str(_tiny_folders(backend)[0]), **options)
    return t5_prompt_cache(backend.get("text_encoder") or backend["stage_1"], **options)


def encode_prompts(backend: dict, prompts: Sequence[str]) -> PromptCache:
    """Encode the prompts not cached yet. The text encoder stays loaded for the next ones until a cascade loads
    (load_backend releases it); once one is loaded, it is released at once."""
    cache = prompt_cache_of(backend)
    cache.encode(prompts)
    if _LOADED:
        release_text_encoders()
    return cache


def release_text_encoders() -> None:
    """Release every text encoder this process loaded, with its memory, and log each release."""
    with _PROMPTS_LOCK:
        caches = list(_PROMPT_CACHES.values())
    for cache in caches:
        if cache.release():
            print(f"diffusion-post: released text encoder {cache.encoder_name}", file=sys.stderr, flush=True)


def load_backend(backend: dict) -> Cascade:
    """Load (once per process) the cascade a backend config describes, after releasing the text encoders; each
    load logs one line (LOAD_MESSAGE) naming its device and precision, so a build's loads can be counted in its log."""
    if backend["name"] not in BACKENDS:
        raise ValueError(f"unknown backend {backend['name']!r}: use {', '.join(BACKENDS)}")
    key = json.dumps(backend, sort_keys=True)
    with _LOCK:
        if key not in _LOADED:
            _drop(set(_LOADED) - _USED)  # an earlier build's, not asked for in this one (never in a one-build process)
            release_text_encoders()
            print(f"{LOAD_MESSAGE} {backend['name']} {_placement(backend)} (process {os.getpid()})", file=sys.stderr,
                  flush=True)
            _LOADED[key] = _load(backend)
        _USED.add(key)
        return _LOADED[key]


def forget(everything: bool = False) -> None:
    """A new build begins, in a process that builds again and again (the preview). The cascades loaded so far stay
    loaded; the first new one this build loads replaces those it has not asked for by then, so that after an edit of
    a backend's options the old cascade is dropped before the new one loads (the two never share a GPU), and a build
    that samples nothing drops nothing. With `everything`, drop them all now, and the ideal backend's image sets (after
    an image of the set changed: a loaded set is keyed by its folders, not by their files)."""
    with _LOCK:
        if everything:
            _drop(set(_LOADED))
        _USED.clear()
    image_set = sys.modules.get(f"{__name__}.image_set")
    if everything and image_set is not None:
        image_set.image_set_of.cache_clear()


def _drop(keys: set[str]) -> None:
    """Drop these loaded cascades and free their memory (under _LOCK)."""
    for key in keys:
        del _LOADED[key]
    if keys:
        from .prompt_cache import free_memory

        free_memory()


def _placement(backend: dict) -> str:
    """'on DEVICE (DTYPE)' of a backend's UNets (the ideal backend: the CPU, float32)."""
    if not encodes_prompts(backend):
        return "on cpu (float32)"
    from .deepfloyd import resolve_device, unet_dtype

    device = resolve_device(backend.get("device"), backend["name"])
    return f"on {device} ({str(unet_dtype(device)).removeprefix('torch.')})"


def _tiny_folders(backend: dict) -> tuple[Path, Path]:
    from .tiny import make_tiny_if

    with _TINY_LOCK:  # an encode job and a sampling job may both ask first
        return make_tiny_if(Path(backend.get("cache_dir", ".cache")) / "tiny")


def _load(backend: dict) -> Cascade:
    cache = Path(backend.get("cache_dir", ".cache"))
    name = backend["name"]
    if name == "ideal":
        from .ideal import load_ideal

        options = {key: backend[key] for key in ("temperature", "photos", "local") if key in backend}
        denoiser = backend.get("denoiser", "exact")
        files = [tuple(pair) for pair in backend.get("input_images", [])] if backend.get("include_inputs", False) else []
        return load_ideal(cache_dir=cache, images=[Path(f) for f in backend.get("images", [])], files=files,
                          denoiser=denoiser if isinstance(denoiser, str) else "exact", **options)
    from .deepfloyd import load_cascade

    prompts = prompt_cache_of(backend)
    if name == "tiny":
        stage_1, stage_2 = _tiny_folders(backend)
        return load_cascade(str(stage_1), str(stage_2), device=backend.get("device"), backend="tiny", prompts=prompts)
    if name == "deepfloyd":
        return load_cascade(backend["stage_1"], backend.get("stage_2"), backend.get("text_encoder"),
                            device=backend.get("device"), prompts=prompts)
    from .trained import load_trained

    return load_trained(backend.get("weights"), device=backend.get("device"), prompts=prompts)
