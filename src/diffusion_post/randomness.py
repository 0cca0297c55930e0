"""Per-image randomness: every image draws from its own generator, seeded from (seed, figure, index),
so an image never changes when other figures or batch companions change."""

import hashlib
from typing import Sequence

import torch
from torch import Tensor


def image_seed(seed: int, figure: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}/{figure}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def image_generators(seed: int, figure: str, count: int) -> list[torch.Generator]:
    """One CPU generator per image of a figure."""
    return [torch.Generator().manual_seed(image_seed(seed, figure, i)) for i in range(count)]


def randn(shape: Sequence[int], generators: Sequence[torch.Generator], like: Tensor | None = None) -> Tensor:
    """Standard normal noise (B, *shape) with row b drawn from generators[b] on the CPU in float32, then moved
    next to `like`, so the same seed gives the same noise on every machine."""
    noise = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
    return noise if like is None else noise.to(device=like.device, dtype=like.dtype)
