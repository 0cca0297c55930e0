"""One recipe per technique: a figure's resolved spec (from config.yaml) -> the tensors it shows.

A recipe returns {"images": (N, 3, H, W) in [-1, 1], ...extras}; tiling, labels and PNG writing happen later
(layout.py), so re-laying out a figure never reruns a model. Each image draws from its own generator
(seed, figure name, image index) and is made by its own denoiser calls (never batched with the figure's other
images), so an image's bytes do not depend on how many images its figure has: CPU kernels change with the batch size.
"""

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import guidance, schedule, techniques
from .denoiser import Cascade, Denoiser, ModelFn
from .filters import Filter, factorization
from .randomness import image_generators
from .sampling import Thresholding
from .spec import prompts_of, timesteps
from .views import get_view

# IF's scheduler configs threshold x0 at the 0.95 quantile, clamped to 1.5 (stage I) and 1.0 (stage II).
THRESHOLDING = {1: Thresholding(0.95, 1.5), 2: Thresholding(0.95, 1.0)}


@dataclass
class Context:
    cascade: Cascade
    name: str  # the figure's name: part of every image's seed
    spec: dict  # the figure's resolved parameters
    images: dict[str, Tensor] = field(default_factory=dict)  # input images by spec key ("image", "mask"), (1, 3, 64, 64)
    source: dict[str, Tensor] | None = None  # result of the figure named by spec["source"]
    progress: bool = False

    def generators(self, count: int) -> list[torch.Generator]:
        return image_generators(self.spec["seed"], self.name, count)

    def loop_options(self, stage: int = 1) -> dict:
        return {"thresholding": THRESHOLDING[stage] if self.spec.get("thresholding") else None, "progress": self.progress}

    def embed(self, prompts: list[str]) -> Tensor:
        return self.cascade.embed(prompts)


def components(spec: dict) -> list[Filter]:
    """The filters of a hybrid figure's factorization (sigmas only for triple_band)."""
    extra = {"sigmas": tuple(spec["sigmas"])} if "sigmas" in spec else {}
    return factorization(spec["factorization"], spec["kernel_size"], spec["sigma"], **extra)


def guide(ctx: Context, image_index: int = 0) -> Callable[[Denoiser], ModelFn]:
    """The conditioning of a figure as a function of the denoiser, so stage II can reuse stage I's."""
    spec = ctx.spec
    scale = spec.get("guidance_scale")
    uncond = ctx.embed([spec["unconditional_prompt"]]) if scale is not None else None
    technique = spec.get("source_technique", spec["technique"])
    if technique == "anagram":
        views = [get_view(name) for name in spec["views"]]
        conds = ctx.embed(spec["prompts"])
        return lambda d: guidance.anagram(d, views, conds, uncond, scale)
    if technique == "hybrid":
        parts = components(spec)
        conds = ctx.embed(spec["prompts"])
        return lambda d: guidance.factorized(d, parts, conds, uncond, scale)
    prompts = prompts_of(spec)
    cond = ctx.embed([prompts[image_index % len(prompts)]])
    if scale is None:
        return lambda d: guidance.conditional(d, cond)
    return lambda d: guidance.classifier_free(d, cond, uncond, scale)


def _from_noise(ctx: Context, model: ModelFn, gens: list[torch.Generator]) -> Tensor:
    stage_1 = ctx.cascade.stage_1
    size = stage_1.sample_size
    return techniques.sample_from_noise(model, (3, size, size), timesteps(ctx.spec), stage_1.alphas_cumprod, gens,
                                        device=_device(stage_1), **ctx.loop_options())


def _device(denoiser) -> torch.device:
    return getattr(denoiser, "device", torch.device("cpu"))


def text_to_image(ctx: Context) -> dict[str, Tensor]:
    """Stage I from noise, one image per prompt."""
    prompts = prompts_of(ctx.spec)
    gens = ctx.generators(len(prompts))
    images = [_from_noise(ctx, guide(ctx, k)(ctx.cascade.stage_1), [g]) for k, g in enumerate(gens)]
    return {"images": torch.cat(images)}


def sample(ctx: Context) -> dict[str, Tensor]:
    """`count` samples of one prompt from pure noise, one at a time (each with its own generator)."""
    model = guide(ctx)(ctx.cascade.stage_1)
    return {"images": torch.cat([_from_noise(ctx, model, [g]) for g in ctx.generators(ctx.spec["count"])])}


def anagram(ctx: Context) -> dict[str, Tensor]:
    """Samples whose views show the other prompts; shown next to those views."""
    samples = sample(ctx)["images"]
    return {"images": views_of(ctx, samples), "samples": samples}


hybrid = sample


def views_of(ctx: Context, images: Tensor) -> Tensor:
    """An anagram and its other views, side by side: (N V, 3, H, W)."""
    views = [get_view(name) for name in ctx.spec["views"]]
    return torch.cat([torch.stack([view.view(x) for view in views]) for x in images])


def upsample(ctx: Context) -> dict[str, Tensor]:
    """Stage II of every image of the source figure, with the source's guidance, views or factorization."""
    stage_2 = ctx.cascade.stage_2
    if stage_2 is None:
        raise ValueError(f"figure {ctx.name}: the backend has no stage II; use a backend with stage_2 set")
    low = ctx.source.get("samples", ctx.source["images"]).to(_device(stage_2.denoiser))
    gens = ctx.generators(len(low))
    samples = torch.cat([techniques.upsample(stage_2, guide(ctx, k), low[k:k + 1], timesteps(ctx.spec), [g],
                                             noise_level=ctx.spec["noise_level"], **ctx.loop_options(2))
                         for k, g in enumerate(gens)])
    if ctx.spec.get("source_technique") == "anagram":
        return {"images": views_of(ctx, samples), "samples": samples}
    return {"images": samples}


def forward(ctx: Context) -> dict[str, Tensor]:
    """The input image and x_t for each t: N(sqrt(abar_t) x0, (1 - abar_t) I)."""
    x0 = ctx.images["image"]
    gens = ctx.generators(len(ctx.spec["timesteps"]))
    alphas = ctx.cascade.stage_1.alphas_cumprod
    noisy = torch.cat([techniques.forward_process(x0, t, alphas, [g]) for t, g in zip(ctx.spec["timesteps"], gens)])
    return {"images": torch.cat([x0, noisy]), "original": x0, "noisy": noisy, "timesteps": torch.tensor(ctx.spec["timesteps"])}


def blur(ctx: Context) -> dict[str, Tensor]:
    """Gaussian blur of each noisy image of the source (one at a time)."""
    return {"images": torch.cat([techniques.blur_denoise(x[None], ctx.spec["kernel_size"], ctx.spec["sigma"])
                                 for x in ctx.source["noisy"]])}


def one_step(ctx: Context) -> dict[str, Tensor]:
    """x0_hat from one noise estimate at each noisy image's own t."""
    stage_1 = ctx.cascade.stage_1
    model = guide(ctx)(stage_1)
    noisy, ts = ctx.source["noisy"].to(_device(stage_1)), ctx.source["timesteps"].tolist()
    images = [techniques.one_step_denoise(model, x[None], t, stage_1.alphas_cumprod) for x, t in zip(noisy, ts)]
    return {"images": torch.cat(images)}


def iterative(ctx: Context) -> dict[str, Tensor]:
    """Noise the input to timesteps[i_start], denoise stride by stride; keep every `show_every`-th x_t,
    and the one-step and blur estimates from the same start for comparison."""
    stage_1 = ctx.cascade.stage_1
    steps = timesteps(ctx.spec)
    i_start, every = ctx.spec["i_start"], ctx.spec["show_every"]
    (g,) = ctx.generators(1)
    x0 = ctx.images["image"].to(_device(stage_1))
    x_t = techniques.forward_process(x0, steps[i_start], stage_1.alphas_cumprod, [g])
    model = guide(ctx)(stage_1)
    record, frames = techniques.progression_recorder(every)
    clean = techniques.iterative_denoise(model, x_t, steps, i_start, stage_1.alphas_cumprod, [g], callback=record, **ctx.loop_options())
    one_step_x0 = techniques.one_step_denoise(model, x_t, steps[i_start], stage_1.alphas_cumprod)
    blurred = techniques.blur_denoise(x_t, ctx.spec["kernel_size"], ctx.spec["sigma"])
    shown = [x_t.cpu()] + [f for f, t in zip(frames, steps[i_start + every::every]) if t > 0]
    return {"images": torch.cat(shown), "comparison": torch.cat([x0, clean, one_step_x0, blurred])}


def iterative_levels(ctx: Context) -> dict[str, Tensor]:
    """Iterative denoising of each noisy image of the source, from its own t down by `stride`."""
    stage_1 = ctx.cascade.stage_1
    model = guide(ctx)(stage_1)
    noisy, ts = ctx.source["noisy"].to(_device(stage_1)), ctx.source["timesteps"].tolist()
    gens = ctx.generators(len(ts))
    images = [techniques.iterative_denoise(model, x[None], schedule.strided_timesteps(t, ctx.spec["stride"]), 0,
                                           stage_1.alphas_cumprod, [g], **ctx.loop_options())
              for x, t, g in zip(noisy, ts, gens)]
    return {"images": torch.cat(images)}


def sdedit(ctx: Context) -> dict[str, Tensor]:
    """SDEdit of the input at each i_start (more noise first), then the input itself."""
    stage_1 = ctx.cascade.stage_1
    x0 = ctx.images["image"].to(_device(stage_1))
    model = guide(ctx)(stage_1)
    gens = ctx.generators(len(ctx.spec["i_starts"]))
    edits = [techniques.sdedit(model, x0, timesteps(ctx.spec), i, stage_1.alphas_cumprod, [g], **ctx.loop_options())
             for i, g in zip(ctx.spec["i_starts"], gens)]
    return {"images": torch.cat([*edits, x0])}


def box_mask(box: list[int], size: int) -> Tensor:
    """(1, 1, size, size), 1 inside rows box[0]:box[1], columns box[2]:box[3] (new content), 0 elsewhere."""
    top, bottom, left, right = box
    mask = torch.zeros(1, 1, size, size)
    mask[..., top:bottom, left:right] = 1
    return mask


def file_mask(image: Tensor) -> Tensor:
    """(1, 1, H, W) from a mask image (1, 3, H, W) in [-1, 1]: 1 where it is light (white = new content), 0 where dark."""
    return (image.mean(1, keepdim=True) > 0).float()


def inpaint(ctx: Context) -> dict[str, Tensor]:
    """The input, the mask (a box, or an image file where white is new content), the part kept, the result."""
    stage_1 = ctx.cascade.stage_1
    x0 = ctx.images["image"].to(_device(stage_1))
    box = ctx.spec["mask"]
    mask = (file_mask(ctx.images["mask"]) if isinstance(box, str) else box_mask(box, x0.shape[-1])).to(x0)
    (g,) = ctx.generators(1)
    model = guide(ctx)(stage_1)
    result = techniques.inpaint(model, x0, mask, timesteps(ctx.spec), stage_1.alphas_cumprod, [g],
                                i_start=ctx.spec.get("i_start", 0), **ctx.loop_options())
    shown_mask = (mask * 2 - 1).expand_as(x0)
    return {"images": torch.cat([x0, shown_mask, x0 * (1 - mask) + mask, result]), "mask": mask}


RECIPES: dict[str, Callable[[Context], dict[str, Tensor]]] = {
    "text_to_image": text_to_image, "sample": sample, "upsample": upsample, "forward": forward, "blur": blur,
    "one_step": one_step, "iterative": iterative, "iterative_levels": iterative_levels, "sdedit": sdedit,
    "inpaint": inpaint, "anagram": anagram, "hybrid": hybrid,
}


def make(ctx: Context) -> dict[str, Tensor]:
    return RECIPES[ctx.spec["technique"]](ctx)
