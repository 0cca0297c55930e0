"""Backends behind the denoiser interface, chosen by the `backend` section of config.yaml."""

import json
from pathlib import Path

from ..denoiser import Cascade

_LOADED: dict[str, Cascade] = {}


def load_backend(backend: dict) -> Cascade:
    """Load (once per process) the cascade a backend config describes."""
    key = json.dumps(backend, sort_keys=True)
    if key not in _LOADED:
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
    raise ValueError(f"unknown backend {name!r}: use ideal, deepfloyd or tiny")
