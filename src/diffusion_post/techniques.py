"""The techniques of the post, each a short composition of the denoiser interface and the one loop.

Images are (B, 3, H, W) in [-1, 1]; `generators` holds one generator per image (randomness.image_generators).
"""

from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import schedule
from .denoiser import Denoiser, ModelFn, StageTwo, split_output
from .filters import gaussian_blur
from .randomness import randn
from .sampling import Callback, sample


def forward_process(x0: Tensor, t: int, alphas_cumprod: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """x_t ~ q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)."""
    eps = randn(x0.shape[1:], generators, like=x0)
    return schedule.add_noise(x0, eps, schedule.abar(alphas_cumprod.to(x0.device), t))


def blur_denoise(x_t: Tensor, kernel_size: int = 5, sigma: float = 2.0) -> Tensor:
    """Classical denoising: a Gaussian low-pass filter."""
    return gaussian_blur(x_t, kernel_size, sigma)


@torch.no_grad()
def one_step_denoise(model: ModelFn, x_t: Tensor, t: int, alphas_cumprod: Tensor) -> Tensor:
    """x0_hat from a single noise estimate (DDPM eq. 15)."""
    eps_hat, _ = split_output(model(x_t, t))
    return schedule.predict_x0(x_t, eps_hat, schedule.abar(alphas_cumprod.to(x_t.device), t))


def _check_i_start(timesteps: Sequence[int], i_start: int) -> None:
    if not 0 <= i_start < len(timesteps):
        raise ValueError(f"i_start={i_start} is outside the schedule of {len(timesteps)} timesteps: use 0..{len(timesteps) - 1}")


def iterative_denoise(model: ModelFn, x_t: Tensor, timesteps: Sequence[int], i_start: int, alphas_cumprod: Tensor,
                      generators: Sequence[torch.Generator], **loop_options) -> Tensor:
    """Denoise x_t, which is at timesteps[i_start], down to a clean image."""
    _check_i_start(timesteps, i_start)
    return sample(model, x_t, timesteps[i_start:], alphas_cumprod, generators, **loop_options)


def sample_from_noise(model: ModelFn, shape: Sequence[int], timesteps: Sequence[int], alphas_cumprod: Tensor,
                      generators: Sequence[torch.Generator], device: torch.device | str = "cpu", **loop_options) -> Tensor:
    """Start from x_T ~ N(0, I), shape (C, H, W) per image."""
    x_T = randn(shape, generators).to(device)
    return sample(model, x_T, timesteps, alphas_cumprod, generators, **loop_options)


def sdedit(model: ModelFn, x0: Tensor, timesteps: Sequence[int], i_start: int, alphas_cumprod: Tensor,
           generators: Sequence[torch.Generator], **loop_options) -> Tensor:
    """SDEdit (Meng et al. 2022): noise x0 to timesteps[i_start], then denoise. Lower i_start = more noise."""
    _check_i_start(timesteps, i_start)
    x_t = forward_process(x0, timesteps[i_start], alphas_cumprod, generators)
    return iterative_denoise(model, x_t, timesteps, i_start, alphas_cumprod, generators, **loop_options)


def inpaint(model: ModelFn, x0: Tensor, mask: Tensor, timesteps: Sequence[int], alphas_cumprod: Tensor,
            generators: Sequence[torch.Generator], i_start: int = 0, **loop_options) -> Tensor:
    """RePaint-style inpainting (Lugmayr et al. 2022): after every step t -> t',
    x_t' <- m x_t' + (1 - m) forward(x0, t'), with mask m = 1 where new content goes. mask: (1 or B, 1, H, W)."""

    def keep_known(x: Tensor, t_prev: int) -> Tensor:
        known = x0 if t_prev < 0 else forward_process(x0, t_prev, alphas_cumprod, generators)
        return mask * x + (1 - mask) * known

    return sdedit(model, x0, timesteps, i_start, alphas_cumprod, generators, projection=keep_known, **loop_options)


def upsample(stage_2: StageTwo, make_model: Callable[[Denoiser], ModelFn], x_low: Tensor, timesteps: Sequence[int],
             generators: Sequence[torch.Generator], noise_level: int = 250, **loop_options) -> Tensor:
    """Stage II: sample a high-resolution image conditioned on the bilinearly upsampled x_low, itself noised to
    `noise_level` by the image-noising schedule. `make_model` applies the same guidance/views/factorization as
    stage I to the stage-II denoiser; views see the concatenated input (x_t, noised upsampled image)."""
    size = stage_2.denoiser.sample_size
    x_T = randn((x_low.shape[1], size, size), generators, like=x_low)
    upscaled = F.interpolate(x_low, size=(size, size), mode="bilinear", align_corners=True)
    abar_s = schedule.abar(stage_2.lowres_alphas_cumprod.to(x_low.device), noise_level)
    upscaled = schedule.add_noise(upscaled, randn(upscaled.shape[1:], generators, like=upscaled), abar_s)
    model = make_model(partial(stage_2.denoiser, noise_level=noise_level))
    with_lowres = lambda x, t: model(torch.cat([x, upscaled], dim=1), t)
    return sample(with_lowres, x_T, timesteps, stage_2.denoiser.alphas_cumprod, generators, **loop_options)


def progression_recorder(every: int) -> tuple[Callback, list[Tensor]]:
    """A callback that keeps x after every `every`-th step (steps every-1, 2 every-1, ...), for progression strips."""
    frames: list[Tensor] = []

    def record(i: int, t: int, x: Tensor, x0_hat: Tensor) -> None:
        if (i + 1) % every == 0:
            frames.append(x.detach().cpu())

    return record, frames
