"""What the workflow reads from a figure's resolved parameters while it parses the Snakefile, without torch (so
a dry run never imports it): the timesteps a figure samples, the components of a hybrid's factorization, and the
prompts whose embeddings it reads."""

import hashlib

STAGE_1_SIZE = 64  # every backend's stage-I images are 64 x 64


def strided_timesteps(start: int = 990, stride: int = 30) -> list[int]:
    """Descending timesteps start, start - stride, ..., down to 0 or the last one above it."""
    if stride <= 0 or start < 0:
        raise ValueError(f"strided timesteps need start >= 0 and stride > 0: got start={start}, stride={stride}")
    return list(range(start, -1, -stride))


def evenly_spaced_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The `num_steps` timesteps diffusers' DDPMScheduler uses by default ("leading" spacing)."""
    step = num_train_timesteps // num_steps
    return [i * step for i in reversed(range(num_steps))]


def timesteps(spec: dict) -> list[int]:
    """num_inference_steps evenly spaced (as IF's pipelines), else strided from `start` by `stride`; none for a
    technique that calls no denoiser (PROMPTLESS)."""
    if spec.get("technique") in PROMPTLESS:
        return []
    if spec.get("num_inference_steps"):
        return evenly_spaced_timesteps(spec["num_inference_steps"])
    return strided_timesteps(spec["start"], spec["stride"])


# The components of each factorization, in the order of a hybrid's prompts (filters.factorization builds them).
COMPONENTS = {"low_high": ("low", "high"), "triple_band": ("low", "band", "high"), "gray_color": ("gray", "color")}


# Techniques that never call the denoiser with a prompt: they read no prompt embedding.
PROMPTLESS = ("forward", "blur")


def prompts_of(spec: dict) -> list[str]:
    """A figure's prompts: `prompts`, else its one `prompt`."""
    return spec["prompts"] if "prompts" in spec else [spec["prompt"]]


def encoded_prompts(spec: dict) -> list[str]:
    """Every prompt whose embedding a figure's sampling reads (figures.guide): its prompts, and the unconditional
    prompt when it uses classifier-free guidance; none for the techniques that call no denoiser with a prompt."""
    if spec["technique"] in PROMPTLESS:
        return []
    unconditional = [spec["unconditional_prompt"]] if spec.get("guidance_scale") is not None else []
    return list(dict.fromkeys(prompts_of(spec) + unconditional))


def prompt_digest(prompt: str) -> str:
    """The name of a prompt's embedding file: the first 24 hex digits of the sha256 of its UTF-8 text."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:24]
