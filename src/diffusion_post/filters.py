"""Image filters: Gaussian blur and the factorizations of factorized diffusion (components sum to the input)."""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import COMPONENTS

Filter = Callable[[Tensor], Tensor]


def gaussian_kernel(kernel_size: int, sigma: float) -> Tensor:
    """Normalized 1-d Gaussian, (kernel_size,)."""
    if kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
        raise ValueError(f"Gaussian blur needs an odd kernel_size >= 1 and sigma > 0: got {kernel_size}, {sigma}")
    r = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    k = torch.exp(-(r**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding."""
    C = x.shape[1]
    k = gaussian_kernel(kernel_size, sigma).to(x)
    pad = kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def lowpass(kernel_size: int = 33, sigma: float = 2.0) -> Filter:
    return lambda x: gaussian_blur(x, kernel_size, sigma)


def highpass(kernel_size: int = 33, sigma: float = 2.0) -> Filter:
    return lambda x: x - gaussian_blur(x, kernel_size, sigma)


def band(kernel_size: int, sigma_low: float, sigma_high: float) -> Filter:
    """Blur at sigma_low minus blur at sigma_high: the middle band of a triple-band split."""
    return lambda x: gaussian_blur(x, kernel_size, sigma_low) - gaussian_blur(x, kernel_size, sigma_high)


def grayscale(x: Tensor) -> Tensor:
    return x.mean(dim=1, keepdim=True).expand_as(x)


def color(x: Tensor) -> Tensor:
    return x - grayscale(x)


def factorization(name: str, kernel_size: int = 33, sigma: float = 2.0, sigmas: tuple[float, float] = (1.0, 2.0)) -> list[Filter]:
    """The components of a named factorization; they sum to the identity."""
    if name == "low_high":
        return [lowpass(kernel_size, sigma), highpass(kernel_size, sigma)]
    if name == "triple_band":
        s1, s2 = sigmas
        return [lowpass(kernel_size, s2), band(kernel_size, s1, s2), highpass(kernel_size, s1)]
    if name == "gray_color":
        return [grayscale, color]
    raise ValueError(f"unknown factorization {name!r}: use one of {', '.join(FACTORIZATIONS)}")


FACTORIZATIONS = tuple(COMPONENTS)
