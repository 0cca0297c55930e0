"""Conditioning wrappers: each turns a denoiser and prompt embeddings into a ModelFn (x_t, t) -> output.

All components of one step (views or factorization parts, times unconditional/conditional halves) go through
ONE batched denoiser call. Guidance touches the noise channels only; the conditional variance travels on.
"""

from typing import Sequence

import torch
from torch import Tensor

from .denoiser import Denoiser, ModelFn, join_output, split_output
from .filters import Filter
from .views import View


def _guided(denoiser: Denoiser, xs: Sequence[Tensor], t: int, conds: Tensor, uncond: Tensor | None, scale: float | None) -> tuple[Tensor, ...]:
    """Outputs for K inputs xs[k] (B, C_in, H, W) conditioned on conds[k]; with a scale, classifier-free
    guidance (Ho & Salimans 2022): eps = eps_u + scale (eps_c - eps_u), conditional variance kept."""
    K, B = len(xs), xs[0].shape[0]
    x = torch.cat(list(xs))  # (K B, C_in, H, W)
    cond = conds.repeat_interleave(B, dim=0)  # (K B, ...)
    if scale is None:
        return denoiser(x, t, cond).chunk(K)
    uncond = uncond.expand(K * B, *uncond.shape[1:])
    out_uncond, out_cond = denoiser(torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
    eps_uncond, _ = split_output(out_uncond)
    eps_cond, v_cond = split_output(out_cond)
    return join_output(eps_uncond + scale * (eps_cond - eps_uncond), v_cond).chunk(K)


def conditional(denoiser: Denoiser, cond: Tensor) -> ModelFn:
    """No guidance: the conditional estimate alone. cond: (1, ...)."""
    return lambda x, t: _guided(denoiser, [x], t, cond, None, None)[0]


def classifier_free(denoiser: Denoiser, cond: Tensor, uncond: Tensor, scale: float) -> ModelFn:
    """cond, uncond: (1, ...)."""
    return lambda x, t: _guided(denoiser, [x], t, cond, uncond, scale)[0]


def anagram(denoiser: Denoiser, views: Sequence[View], conds: Tensor, uncond: Tensor | None, scale: float | None) -> ModelFn:
    """Visual anagrams (Geng et al. 2024): eps = mean_k inverse_view_k(eps(view_k(x), prompt_k)). conds: (K, ...)."""
    if len(views) != conds.shape[0]:
        raise ValueError(f"anagram needs one prompt per view: got {conds.shape[0]} prompts, {len(views)} views")

    def model(x: Tensor, t: int) -> Tensor:
        outs = _guided(denoiser, [view.view(x) for view in views], t, conds, uncond, scale)
        return torch.stack([view.inverse_view(out) for view, out in zip(views, outs)]).mean(dim=0)

    return model


def factorized(denoiser: Denoiser, components: Sequence[Filter], conds: Tensor, uncond: Tensor | None, scale: float | None) -> ModelFn:
    """Factorized diffusion / hybrid images (Geng et al. 2024): eps = sum_k f_k(eps(x, prompt_k)) over
    components f_k that sum to the identity; the learned-range values are averaged. conds: (K, ...)."""
    if len(components) != conds.shape[0]:
        raise ValueError(f"hybrid needs one prompt per component: got {conds.shape[0]} prompts, {len(components)} components")

    def model(x: Tensor, t: int) -> Tensor:
        outs = _guided(denoiser, [x] * len(components), t, conds, uncond, scale)
        eps_hats, vs = zip(*(split_output(out) for out in outs))
        eps_hat = sum(f(e) for f, e in zip(components, eps_hats))
        return join_output(eps_hat, torch.stack(vs).mean(dim=0))

    return model
