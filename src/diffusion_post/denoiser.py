"""The one interface every sampling loop calls.

A denoiser maps a noisy batch to the IF UNet's output format:

    denoiser(x_t, t, embeds) -> out, out: (B, 2C, H, W) = C noise channels + C learned-range values in [-1, 1]

`x_t` is (B, C_in, H, W) (C_in = C for stage I, 2C for stage II where the noised upsampled image is
concatenated), `t` an integer timestep, `embeds` (B, ...) the prompt conditioning made by
`embed(prompts)`. Everything else (guidance, views, factorizations) wraps this call.
"""

import threading
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, int], Tensor]
"""A denoiser with its conditioning bound: (x_t, t) -> (B, 2C, H, W) output."""


class Denoiser(Protocol):
    alphas_cumprod: Tensor  # (T,) float32, the training schedule abar_t
    sample_size: int  # H = W of the images it makes
    description: dict  # what made the figures: backend, model ids (written into PNG metadata)

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """Prompt conditioning, batch first: (len(prompts), ...)."""

    def __call__(self, x_t: Tensor, t: int, embeds: Tensor, **kwargs) -> Tensor:
        """(B, C_in, H, W) -> (B, 2C, H, W)."""


@dataclass
class StageTwo:
    """A stage-II (super-resolution) denoiser plus the schedule that noises its low-resolution input."""

    denoiser: Denoiser
    lowres_alphas_cumprod: Tensor  # the image-noising schedule for the upsampled 64-px image


class Cascade:
    """What a backend provides: stage I, optionally stage II, and one prompt encoder shared by both.

    `stage_2` may be given as a function that loads it: it is called once, on the first use (a build without
    stage-II figures never loads stage II)."""

    def __init__(self, stage_1: Denoiser, stage_2: StageTwo | Callable[[], StageTwo] | None = None,
                 description: dict | None = None):
        self.stage_1 = stage_1
        self._stage_2 = stage_2
        self.description = description if description is not None else {}
        self._lock = threading.Lock()  # jobs running as threads share a cascade

    @property
    def stage_2(self) -> StageTwo | None:
        with self._lock:
            if callable(self._stage_2):
                self._stage_2 = self._stage_2()
            return self._stage_2

    def embed(self, prompts: Sequence[str]) -> Tensor:
        return self.stage_1.embed(prompts)


def split_output(out: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2C, H, W) -> noise estimate eps_hat (B, C, H, W), learned-range values v (B, C, H, W)."""
    eps_hat, v = out.chunk(2, dim=1)
    return eps_hat, v


def join_output(eps_hat: Tensor, v: Tensor) -> Tensor:
    return torch.cat([eps_hat, v], dim=1)
