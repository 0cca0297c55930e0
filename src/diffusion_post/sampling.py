"""The one strided DDPM loop. Every technique of the post is a choice of model function, start and hooks."""

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import interrupt, schedule
from .denoiser import ModelFn, split_output
from .randomness import randn

Projection = Callable[[Tensor, int], Tensor]
"""x_t' -> x_t' after each step (inpainting); gets the step's target timestep t' (-1 = clean)."""
Callback = Callable[[int, int, Tensor, Tensor], None]
"""(step index, t, x_t' after the step, x0_hat of the step)."""


@dataclass(frozen=True)
class Thresholding:
    """Dynamic thresholding of x0_hat as diffusers' IF schedulers do (ratio 0.95, max 1.5 in stage I)."""

    ratio: float = 0.95
    max_value: float = 1.5


@torch.no_grad()
def sample(
    model: ModelFn,
    x: Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: Tensor,
    generators: Sequence[torch.Generator],
    *,
    thresholding: Thresholding | None = None,
    projection: Projection | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling over descending `timesteps` with the model's learned-range variance.

    Each step t -> t' (the next timestep, or a clean image after the last) applies DDPM eq. 15 (x0_hat),
    eq. 7 (posterior mean) and improved-DDPM eq. 15 (variance). Noise is added on every step but the last: its
    target is the clean image (t' = -1, abar_t' = 1), whose posterior variance beta_tilde is 0. For schedules that
    end at t = 0 this is diffusers' `t > 0` rule; schedules that end above 0 (iterative_levels from t = 250 by 30
    ends at 10) end clean too.
    x: (B, C, H, W) at timesteps[0]; generators: one per image.
    """
    alphas_cumprod = alphas_cumprod.to(x.device)
    for i, t in enumerate(tqdm(timesteps, disable=not progress, leave=False)):
        interrupt.check()  # Ctrl-C stops a job running in a worker thread at the next step
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        abar_t, abar_prev = schedule.abar(alphas_cumprod, t), schedule.abar(alphas_cumprod, t_prev)
        eps_hat, v = split_output(model(x, t))

        x0_hat = schedule.predict_x0(x, eps_hat, abar_t)
        if thresholding is not None:
            x0_hat = schedule.dynamic_threshold(x0_hat, thresholding.ratio, thresholding.max_value)
        x = schedule.posterior_mean(x, x0_hat, abar_t, abar_prev)
        if t_prev >= 0:
            log_variance = schedule.learned_range_log_variance(v, abar_t, abar_prev)
            x = x + (0.5 * log_variance).exp() * randn(x.shape[1:], generators, like=x)
        if projection is not None:
            x = projection(x, t_prev)
        if callback is not None:
            callback(i, t, x, x0_hat)
    return x
