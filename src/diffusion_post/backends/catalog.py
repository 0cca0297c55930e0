"""What the workflow knows of the backends without loading any (torch-free: read while the Snakefile is parsed):
their names, which of them encode prompts before sampling, and the key of a text encoder's prompt embeddings."""

import re

BACKENDS = ("ideal", "deepfloyd", "tiny", "trained")
IF_T5 = "DeepFloyd/t5-v1_1-xxl"  # the T5 of every IF-I stage: IF-I-M, -L and -XL ship the same one
IF_I_REPOSITORY = re.compile(r"DeepFloyd/IF-I-(M|L|XL)-v1\.0")


def encodes_prompts(backend: dict) -> bool:
    """Whether the backend's prompts are encoded before sampling (every cascade backend: deepfloyd, tiny, trained)."""
    return backend["name"] != "ideal"


def text_encoder_key(model_id: str) -> str:
    """The prompt-embedding cache key of a text encoder: one for every IF-I hub repository (they ship one T5),
    so that embeddings made or imported for IF-I-L serve IF-I-XL and IF-I-M too; else the model id or folder."""
    return IF_T5 if IF_I_REPOSITORY.fullmatch(model_id) else model_id


def text_encoder_settings(backend: dict) -> dict:
    """What decides a backend's prompt embeddings (the encode jobs' params): its text encoder."""
    if backend["name"] == "deepfloyd":
        return {"name": "deepfloyd", "text_encoder": text_encoder_key(backend.get("text_encoder") or backend["stage_1"])}
    return {"name": backend["name"]}
