"""Backends behind the denoiser interface, chosen by the `backend` section of config.yaml."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch-free at import: the config check reads backends.local_options while the workflow parses
    from ..denoiser import Cascade

_LOADED: dict[str, Cascade] = {}
_LOCK = threading.Lock()  # jobs running as threads of one Snakemake process share one load
LOAD_MESSAGE = "diffusion-post: loading backend"


def load_backend(backend: dict) -> Cascade:
    """Load (once per process) the cascade a backend config describes; each load logs one line (LOAD_MESSAGE),
    so a build's model loads can be counted in its log."""
    key = json.dumps(backend, sort_keys=True)
    with _LOCK:
        if key not in _LOADED:
            print(f"{LOAD_MESSAGE} {backend['name']} (process {os.getpid()})", file=sys.stderr, flush=True)
            _LOADED[key] = _load(backend)
    return _LOADED[key]


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

    if name == "tiny":
        from .tiny import make_tiny_if

        stage_1, stage_2 = make_tiny_if(cache / "tiny")
        return load_cascade(str(stage_1), str(stage_2), device=backend.get("device"),
                            cache_dir=cache / "prompt_embeds", backend="tiny")
    if name == "deepfloyd":
        return load_cascade(backend["stage_1"], backend.get("stage_2"), backend.get("text_encoder"),
                            device=backend.get("device"), cache_dir=cache / "prompt_embeds")
    if name == "trained":
        from .trained import load_trained

        return load_trained(backend.get("weights"), device=backend.get("device"), cache_dir=cache / "prompt_embeds")
    raise ValueError(f"unknown backend {name!r}: use ideal, deepfloyd, tiny or trained")
