"""The exact denoiser: the minimum-mean-squared-error noise estimate over the finite captioned image set.

If x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps, with y one of the set images y_i drawn with prompt weights w_i,
the MMSE estimate of the clean image is (Tweedie's formula for a finite set; e.g. Karras et al. 2022, app. B.3)

    E[y | x_t] = sum_i softmax_i(log w_i - |x_t - sqrt(abar_t) y_i|^2 / (2 (1 - abar_t))) y_i,
    eps_hat    = (x_t - sqrt(abar_t) E[y | x_t]) / sqrt(1 - abar_t).

It needs no training, runs offline on a CPU and makes real pictures (it returns set images: it memorizes).
Prompt weights come from a real sentence encoder (all-MiniLM-L6-v2): log w_i = cos(prompt, caption_i) / temperature;
the empty prompt is the zero vector, i.e. uniform weights, so classifier-free guidance has a true unconditional.
Stage II is the same estimate at 256 px, with the noised upsampled 64-px image z as a second observation.
The products with the set are float32 and everything else float64 (dots): the post's PNGs are those of float64
products to one grey level.
"""

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from .image_set import STAGE_1_SIZE, STAGE_2_SIZE, STORED_SIZE, Index, ImageSet, LastCall, PromptCache, SetDenoiser, resize


def sq_dist(x_sq: Tensor, x_dot_y: Tensor, y_sq: Tensor, c: float) -> Tensor:
    """|x_b - c y_i|^2 = |x_b|^2 - 2 c x_b.y_i + c^2 |y_i|^2 as (B, N) (float64: the terms cancel at small t)."""
    return x_sq[:, None] - 2 * c * x_dot_y.double() + c**2 * y_sq[None]


def dots(x: Tensor, y: Tensor) -> Tensor:
    """x_b.y_i (B, N) computed in y's dtype (ImageSet.products_dtype). The products read the whole set at every call,
    so the memory sets their speed: float32 halves the read. Only the products are rounded (this one and the
    posterior mean's p y); norms, distances and logits stay float64. What that moves, and why a near tie between
    two images is the one place it shows: docs/experiments/build-time.md, "sixth session"."""
    return x.to(y.dtype) @ y.T


def dots_error(x_norm: Tensor, y_norm: Tensor, dtype: torch.dtype, D: int) -> Tensor:
    """A bound on |dots(x, y) - x.y| (B, N) from the norms |x_b| (B,) and |y_i| (N,) of D-vectors: both rounded to
    dtype, then D products summed in it: gamma_(D+2) |x|.|y| <= gamma_(D+2) |x_b| |y_i|, gamma_n = n u / (1 - n u)
    (Higham, Accuracy and Stability of Numerical Algorithms, 2002, section 3.1), for any order of summation."""
    nu = (D + 2) * torch.finfo(dtype).eps / 2
    return nu / (1 - nu) * x_norm[:, None] * y_norm[None]


def posterior_mean(x_sq: Tensor, x_adj: Tensor, sqrt_abar: float, var: float, prior: Tensor,
                   chunks: Iterable[tuple[Index, Tensor, Tensor]]) -> Tensor:
    """sum_i softmax_i(prior_i - |x - sqrt_abar M y_i|^2 / (2 var)) y_i for images seen through a linear map M
    (the identity in stage I, 2x upsampling in stage II), so that E[y | x] = M (the result).
    x_sq = |x|^2 (B,), x_adj = M^T x (B, D), prior (B, N); chunks: (index into prior's columns, y (k, D), |M y|^2 (k,)),
    y in the products' dtype (dots), the rest float64, summed with a running log-sum-exp so that one chunk of images
    is in memory at a time."""
    B, D = x_adj.shape
    m = torch.full((B, 1), -math.inf, dtype=torch.float64)  # running max logit
    total, mean = torch.zeros(B, 1, dtype=torch.float64), torch.zeros(B, D, dtype=torch.float64)
    for idx, y, My_sq in chunks:
        logits = prior[:, idx] - sq_dist(x_sq, dots(x_adj, y), My_sq, sqrt_abar) / (2 * var)
        m_new = torch.maximum(m, logits.max(1, keepdim=True).values)
        p, rescale = (logits - m_new).exp(), (m - m_new).exp()
        # images below 1e-30 of the largest weight change no digit of the mean: skip their rows of y (most of the
        # set once the posterior has narrowed), which halves the memory read per call
        keep = (p > 1e-30).any(0).nonzero().squeeze(1)
        p = p.to(y.dtype)  # (the weights are in [0, 1]: float32 keeps their 7 digits)
        p_y = p[:, keep] @ y[keep] if len(keep) < len(y) // 2 else p @ y  # (a gather copies: only when it is small)
        total, mean, m = total * rescale + p.sum(1, keepdim=True, dtype=torch.float64), mean * rescale + p_y, m_new
    return mean / total


def collapsed(x_t: Tensor) -> Tensor:
    """The learned-range value v = -1 everywhere: it selects the DDPM posterior variance beta_tilde (improved DDPM
    eq. 15), the variance of q(x_t' | x_t, y) for a known image y: exact once the posterior over the set has collapsed
    onto one image, which happens partway through sampling (before that the optimal variance is larger, Bao et al.
    2022); v = +1 (beta_t) is the optimum for y ~ N(0, I) and would keep adding noise the last steps cannot remove."""
    return torch.full_like(x_t, -1.0)


class ExactDenoiser(SetDenoiser):
    """Stage I: the exact MMSE denoiser over the 64-px set."""

    def __init__(self, image_set: ImageSet, prompts: PromptCache, description: dict):
        super().__init__(image_set, prompts, description, STAGE_1_SIZE)

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: int, embeds: Tensor, noise_level: int | None = None) -> Tensor:
        """(B, 3, 64, 64) -> (B, 6, 64, 64)."""
        self._check(x_t, 3)
        abar_t = self.alphas_cumprod[t].item()
        x = x_t.detach().cpu().double()
        S = self.set
        chunks = [(slice(None), S.y_64_products(), S.y_64_sq)]  # all images at once: the 64-px set is small
        y_hat = posterior_mean(x.square().sum((1, 2, 3)), x.flatten(1), math.sqrt(abar_t), 1 - abar_t,
                               S.log_weights(embeds), chunks)
        return self.output(x, y_hat, collapsed(x), t, like=x_t)


class ExactUpsampler(SetDenoiser):
    """Stage II: the exact MMSE denoiser over the 256-px set y_i given x_t and z = sqrt(abar_s) up_4(y^64) + noise,
    up_4 = 64 -> 256 bilinear (align_corners=True) as techniques.upsample makes it. The posterior logits are

        log w_i - |z - sqrt(abar_s) up_4(y_i^64)|^2 / (2 (1 - abar_s)) - |x_t - sqrt(abar_t) y_i|^2 / (2 (1 - abar_t)),

    computed at 128 px or less through the adjoints of the (linear) resizings. Images whose logit is provably more
    than `prune_margin` below the largest (weight < exp(-prune_margin) of the largest) are dropped before their
    128-px copies are read; prune_margin=inf keeps all."""

    def __init__(self, image_set: ImageSet, prompts: PromptCache, description: dict, lowres_alphas_cumprod: Tensor,
                 prune_margin: float = 50.0, chunk: int = 128):
        super().__init__(image_set, prompts, description, STAGE_2_SIZE)
        self.lowres_alphas_cumprod = lowres_alphas_cumprod
        self.prune_margin = prune_margin
        self.chunk = chunk
        # |Q y_i|: the part of y_i within 4x4 blocks; |y|^2 = 16 |area_4(y)|^2 + |Q y|^2 is an orthogonal split
        self.q_y = (image_set.y_sq - 16 * image_set.y_64_sq).clamp(min=0).sqrt()
        self.y_64_norm = image_set.y_64_sq.sqrt()
        self.last_candidates = 0  # how many images the last call read, for inspection
        self.prior_given_z = LastCall(self._prior_given_z)

    def _prior_given_z(self, z: Tensor, embeds: Tensor, abar_s: float) -> Tensor:
        """1. prior_i = log w_i - |z - sqrt(abar_s) up_4(y_i^64)|^2 / (2 (1 - abar_s)), through up_4^T z at 64 px."""
        S = self.set
        z_adj = resize(S.up_4.T, z).flatten(1)
        return S.log_weights(embeds) - sq_dist(z.square().sum((1, 2, 3)), dots(z_adj, S.y_64_products()), S.up_4_sq,
                                               math.sqrt(abar_s)) / (2 * (1 - abar_s))

    def logit_upper_bound(self, x_t: Tensor, x_sq: Tensor, prior: Tensor, c: float, var: float) -> Tensor:
        """An upper bound on every logit (B, N) from 64-px quantities, as |v|^2 = 16 |area_4(v)|^2 + |Q v|^2 and
        |Q(x_t - c y)| >= | |Q x_t| - c |Q y| |, less the products' rounding (dots_error), which it must not lose."""
        S = self.set
        x_64 = F.avg_pool2d(x_t, 4).flatten(1)
        x_64_sq = x_64.square().sum(1)
        q_x = (x_sq - 16 * x_64_sq).clamp(min=0).sqrt()
        rounding = 16 * 2 * c * dots_error(x_64_sq.sqrt(), self.y_64_norm, S.products_dtype, x_64.shape[1])
        return prior - (16 * sq_dist(x_64_sq, dots(x_64, S.y_64_products()), S.y_64_sq, c)
                        + (q_x[:, None] - c * self.q_y[None]) ** 2 - rounding) / (2 * var)

    @torch.no_grad()
    def __call__(self, x_in: Tensor, t: int, embeds: Tensor, noise_level: int | None = None) -> Tensor:
        """(B, 6, 256, 256) = cat(x_t, z) -> (B, 6, 256, 256)."""
        x_t, z, abar_t, abar_s = self._stage_two_inputs(x_in, t, noise_level)
        c, var, S = math.sqrt(abar_t), 1 - abar_t, self.set

        prior = self.prior_given_z(z, embeds, abar_s)  # the same at every step of a run: computed once
        # 2. |x_t - c y_i|^2 = |x_t|^2 - 2 c (up_2^T x_t).y_i^128 + c^2 |y_i|^2
        x_sq, x_adj = x_t.square().sum((1, 2, 3)), resize(S.up_2.T, x_t).flatten(1)
        candidates = torch.arange(len(S))
        if math.isfinite(self.prune_margin):
            upper = self.logit_upper_bound(x_t, x_sq, prior, c, var)
            # the exact logit of the best bound is a lower bound on the max
            best = upper.argmax(1)
            best_logit = prior.gather(1, best[:, None])[:, 0] - (
                x_sq - 2 * c * (x_adj * S.y_128(best)).sum(1) + c**2 * S.y_sq[best]) / (2 * var)
            candidates = torch.nonzero((upper >= best_logit[:, None] - self.prune_margin).any(0))[:, 0]
        # 3. the posterior mean over the candidates at 128 px, then upsampled: E[up_2(y)] = up_2(E[y])
        chunks = ((idx, S.y_128(idx, S.products_dtype), S.y_sq[idx]) for idx in candidates.split(self.chunk))
        mean_128 = posterior_mean(x_sq, x_adj, c, var, prior, chunks)
        self.last_candidates = len(candidates)
        y_hat = resize(S.up_2, mean_128.view(-1, 3, STORED_SIZE, STORED_SIZE))
        return self.output(x_t, y_hat, collapsed(x_t), t, like=x_in)
