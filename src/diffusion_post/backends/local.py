"""The local denoiser: the ideal backend's other estimator, a training-free patch posterior.

The equivariant local score machine of Kamb & Ganguli 2024 ("An analytic theory of creativity in convolutional
diffusion models", arXiv 2412.20292) replaces the exact posterior over whole set images by one posterior per pixel
p, over set images y_n (and, optionally, shifted copies of them), that sees only a window W(p) of P(t) x P(t)
pixels around p:

    D_n(p)     = sum_{q in W(p), c} (x_t[c, q] - sqrt(abar_t) y_n[c, q])^2        (a box filter of the squared difference)
    logit_n(p) = lambda(P) log w_n - D_n(p) / (2 (1 - abar_t)),
    E[y(p) | x_t] ~ sum_n softmax_n(logit_n(p)) y_n(p).

Each pixel copies from the set images whose neighbourhood agrees with its own, so outputs are new combinations of
set patches (collages at large t, details from the nearest patches at small t) instead of whole set images. With
a window covering the whole image (P >= 2 H - 1, no shifts, lambda = 1) every pixel sees every pixel and this is
the exact MMSE denoiser of exact.py. w_n are the prompt weights of image_set.ImageSet (at the local temperature);
lambda(P) = (P / window[1])^prior_fade: 1 at the largest window, where the prompt sets the layout, fading as the
window shrinks with `prior_fade` > 0, so that at low noise the image, not the caption, decides which patches a pixel
copies (with the full prior, the prompt 'a high quality photo' keeps a user's photo covered in the cat crops its
caption favours down to t = 390; bench/bench_quality.py, docs/experiments/quality.md). The window shrinks
linearly from window[1] at t = 999 to window[0] at t = 0.

The top steps (stage I, t >= `top`): window `top_window` and lambda = `top_prior`. At t = 960 (SNR 0.004) a
15-px window sums 3 x 225 noisy values, enough to see the mean colour of what x_t was noised from (P^2 3 SNR
~ 2.5), so SDEdit from there makes a collage that keeps the input's colours; a 3-px window sees ~0.1 of that,
so those steps return about the prompt prior's per-pixel mean and the prompt, not the input, sets the layout.
lambda < 1 there keeps classifier-free guidance, which amplifies that mean, from making every sample one set
image (bench/bench_quality.py; docs/experiments/quality.md). Stage II is left on the linear schedule (its x_t at
those steps is pure noise and its z observation decides).

Speed: for each block of 8 x 8 pixels only the `candidates` images (or shifted copies) of largest logit are kept,
ranked by the window distance of 4 x 4 area-pooled images (16 |pool(x - c y)|^2 <= |x - c y|^2 over whole
cells, a lower bound); the exact window distances are then computed on those candidates' patches only. A pixel
at a block's edge needs what the pixel across the edge copies: with the block's own candidates alone, each block
becomes a square of its own images (an 8-px grid across every sample). `share` > 0 adds the `share` best
candidates of each of the 4 neighbouring blocks, so that a patch can run on across the edge.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .image_set import STAGE_1_SIZE, STAGE_2_SIZE, STORED_SIZE, ImageSet, LastCall, PromptCache, SetDenoiser, unit, up_2
from .local_options import POOL, LocalOptions


def box_sum(sq: Tensor, P: int, out: int) -> Tensor:
    """Sums of P x P windows of (..., L, L), L = out + P - 1, at the out x out positions: (..., out, out)."""
    S = F.pad(sq.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    return S[..., P:P + out, P:P + out] - S[..., :out, P:P + out] - S[..., P:P + out, :out] + S[..., :out, :out]


def unique_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, D) -> the first row of each distinct value (U,) and each row's index among those (B,): the rows of a batch
    that hold the same input (the unconditional and conditional halves of classifier-free guidance, the parts of a
    hybrid), whose window distances are then computed once."""
    first: list[int] = []
    inverse = []
    for b in range(len(x)):
        match = next((u for u, f in enumerate(first) if torch.equal(x[b], x[f])), None)
        if match is None:
            first.append(b)
            match = len(first) - 1
        inverse.append(match)
    return torch.tensor(first), torch.tensor(inverse)


def shared_candidates(cand: Tensor, inverse: Tensor, U: int) -> tuple[Tensor, Tensor]:
    """The candidates of the rows that share an input, once: cand (B, nb, k) sorted -> union (U, nb, J) (padded with
    its first entry) and each row's candidates as positions in its input's union (B, nb, k)."""
    B, nb, k = cand.shape
    sentinel = torch.iinfo(cand.dtype).max
    rows = [cand[inverse == u].permute(1, 0, 2).reshape(nb, -1) for u in range(U)]  # (nb, rows of u x k)
    width = max(r.shape[1] for r in rows)
    stacked = torch.stack([F.pad(r, (0, width - r.shape[1]), value=sentinel) for r in rows]).sort(dim=2).values
    stacked[..., 1:][stacked[..., 1:] == stacked[..., :-1]] = sentinel  # each candidate once per block
    stacked = stacked.sort(dim=2).values
    J = int((stacked != sentinel).sum(2).max())
    union = stacked[..., :J]
    position = torch.searchsorted(union[inverse], cand)
    return torch.where(union == sentinel, union[..., :1], union), position


def learned_range_of(post_var: Tensor, abar: Tensor, t: int) -> Tensor:
    """The learned-range value v whose variance matches the posterior's, for a one-step transition t -> t - 1.

    The exact denoiser returns v = -1 (beta_tilde): right once its posterior has collapsed onto one image. The
    local posterior stays wide (each pixel mixes several patches), and then the variance of x_{t-1} given x_t is
    beta_tilde + a^2 Var[x0 | x_t], a = sqrt(abar_{t-1}) beta_t / (1 - abar_t) (the posterior mean's coefficient of
    x0; Bao et al. 2022, Analytic-DPM). We report, per pixel, the fraction of the way from beta_tilde to beta_t
    (in log space, improved DDPM eq. 15) that this variance sits, clipped to [0, 1]; for small steps it tends to
    Var[x0 | x_t] / (1 - abar_t). Var is the per-pixel variance of the set pixels under the local weights, so a
    collapsed posterior gives v = -1 as the exact denoiser does, and a wide one adds the noise it is unsure about.
    """
    if t == 0:
        return torch.full_like(post_var, -1.0)
    a_t, a_prev = abar[t].double(), abar[t - 1].double()
    beta = 1 - a_t / a_prev
    beta_tilde = (1 - a_prev) / (1 - a_t) * beta
    coef = a_prev.sqrt() * beta / (1 - a_t)
    frac = torch.log1p(coef**2 * post_var.clamp(min=0) / beta_tilde) / torch.log(beta / beta_tilde)
    return 2 * frac.clamp(0, 1) - 1


class _Local(SetDenoiser):
    """What both local stages share: the options, the pooled and shifted ranking set, the candidate search."""

    def __init__(self, image_set: ImageSet, prompts: PromptCache, description: dict, sample_size: int, options: LocalOptions):
        super().__init__(image_set, prompts, description, sample_size)
        self.options = options
        self.offsets = options.offsets()
        self.y = image_set.y_64.view(-1, 3, STAGE_1_SIZE, STAGE_1_SIZE)
        self._copies: dict[tuple, Tensor] = {}
        self._inside: dict[int, Tensor] = {}
        self.pad = max(options.window[1], options.top_window) // 2  # edge pixels repeated for the largest window
        # one per observation: stage II's second, z, is the same at every step of a run, so its ranking distances
        # to the whole set are computed once per run (and once per window size)
        self.pooled_windows = (LastCall(self.pooled_window), LastCall(self.pooled_window))
        per_row = STAGE_1_SIZE // options.block
        block = torch.arange(per_row**2)[:, None]  # blocks in raster order: their row and column, (nb, 1) each
        self.block_row, self.block_col = block // per_row, block % per_row
        # window distances are differences of nearby pixels, summed over at most a window: float32 keeps ~7 digits
        # of each, enough for the softmax (tests set float64 to compare with the exact denoiser's 1e-9)
        self.dtype = torch.float32

    def copies(self, y_set: Tensor, dtype: torch.dtype | None = None, pool: int = 1, scale: int = 1, pad: int = 0,
               rows_last: bool = False) -> Tensor:
        """Every shifted copy of every image of a (N, 3, H, W) set (shift s of image n is row s N + n; offsets times
        `scale`, edge pixels repeated), area-pooled by `pool`, in `dtype` (default: the set's), with `pad` pixels
        around each (edge pixels repeated), made once: (M, 3, H', W'), or with `rows_last` (3, H' W', M), each
        pixel's values of the M rows side by side."""
        key = (id(y_set), dtype, pool, scale, pad, rows_last)
        if key not in self._copies:
            shifted = [self.shifted(y_set, dy * scale, dx * scale) for dy, dx in self.offsets]
            shifted = [F.avg_pool2d(y, pool) if pool > 1 else y for y in shifted]
            copies = (torch.cat(shifted) if len(shifted) > 1 else shifted[0]).to(dtype or y_set.dtype)
            copies = F.pad(copies, (pad,) * 4, mode="replicate") if pad else copies
            self._copies[key] = (copies.flatten(2).permute(1, 2, 0) if rows_last else copies).contiguous()
        return self._copies[key]

    @staticmethod
    def shifted(y: Tensor, dy: int, dx: int) -> Tensor:
        """y(q - (dy, dx)) with edge pixels repeated: (..., H, W)."""
        if dy == dx == 0:
            return y
        H, W = y.shape[-2:]
        rows, cols = (torch.arange(H) - dy).clamp(0, H - 1), (torch.arange(W) - dx).clamp(0, W - 1)
        return y[..., rows, :][..., cols]

    def windows(self, padded: Tensor, P: int) -> Tensor:
        """Each block's window of (R, 3, 64 + 2 pad, 64 + 2 pad) images padded by `self.pad`: the L x L pixels
        (L = block + P - 1) centred on the block, as a view (R, blocks down, blocks across, 3, L, L). Indexing it
        gathers the windows without a flat index of every pixel (2-3x less memory traffic than `take`)."""
        b, L, start = self.options.block, self.options.block + P - 1, self.pad - P // 2
        span = padded[..., start:start + STAGE_1_SIZE + P - 1, start:start + STAGE_1_SIZE + P - 1]
        return span.unfold(2, L, b).unfold(3, L, b).permute(0, 2, 3, 1, 4, 5)

    def inside(self, P: int) -> Tensor:
        """Which pixels of each block's P x P window lie inside the 64-px image: (nb, L, L) in raster order of the
        blocks, made once per P."""
        if P not in self._inside:
            b, per_row = self.options.block, STAGE_1_SIZE // self.options.block
            lines = (torch.arange(per_row) * b - P // 2)[:, None] + torch.arange(b + P - 1)  # (per_row, L)
            inside = (lines >= 0) & (lines < STAGE_1_SIZE)
            self._inside[P] = inside.repeat_interleave(per_row, 0)[:, :, None] & inside.repeat(per_row, 1)[:, None, :]
        return self._inside[P]

    @property
    def temperature(self) -> float:
        return self.options.temperature

    def prior(self, embeds: Tensor, scale: float) -> Tensor:
        """scale log w_n, (B, N): the prompt prior at the local temperature, scaled (LocalOptions.at)."""
        return scale * self.set.log_weights(embeds, self.temperature)

    def candidates(self, observations: list[tuple[Tensor, Tensor, float, float]], prior: Tensor, P: int,
                   first: Tensor, inverse: Tensor) -> Tensor:
        """Per block, the `candidates` rows of the ranking set of largest pooled logit, then the `share` largest of
        each of its 4 neighbours (an index may repeat): (B, blocks, candidates + 4 share) indices.
        The pooled logit sums, over the observations (x (B, 3, 64, 64), y_set (N, 3, 64, 64), c, var), a lower bound
        of D: 16 |pool_4(x - c y)|^2 over the 4 x 4 cells of a window of about P x P pixels centred on the block,
        computed once per distinct input (first, inverse: unique_rows) and, for an observation the same as at the
        last call (stage II's z), not again (pooled_windows)."""
        o = self.options
        r = (P // 2 + POOL // 2) // POOL
        score = prior.float().repeat(1, len(self.offsets))[:, :, None]  # (B, M, 1)
        for i, (x, y_set, c, var) in enumerate(observations):
            window = self.pooled_windows[i](x[first], y_set, c, r)  # (U, M, blocks down, blocks across)
            score = score - POOL**2 * window[inverse][..., :STAGE_1_SIZE // o.block, :STAGE_1_SIZE // o.block].flatten(2) / (2 * var)
        k = min(o.candidates, score.shape[1])
        best = score.topk(k, dim=1).indices.transpose(1, 2)  # (B, blocks, k), best first
        share, per_row = min(o.share, k), STAGE_1_SIZE // o.block
        grid = best[..., :share].reshape(best.shape[0], per_row, per_row, share)  # (B, rows, cols, share)
        index = torch.arange(per_row)
        neighbour = lambda d: (index + d).clamp(0, per_row - 1)  # an edge block's missing neighbour is itself
        shared = [grid[:, neighbour(dy)][:, :, neighbour(dx)].flatten(1, 2) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
        return torch.cat([best, *shared], dim=2)  # (B, blocks, k + 4 share)

    def pooled_window(self, x: Tensor, y_set: Tensor, c: float, r: int) -> Tensor:
        """|pool_4(x - c y)|^2 summed over the cells of each block's window (the block's cells and r around it), for
        each distinct input x (U, 3, 64, 64) and ranking row y of y_set: (U, M, blocks down, blocks across), with
        channels-last strides (M innermost)."""
        cells, per_block = STAGE_1_SIZE // POOL, self.options.block // POOL
        size = per_block + 2 * r
        xp = F.avg_pool2d(x, POOL).float().flatten(2)[..., None]  # (U, 3, 256, 1)
        diff = torch.sub(xp, c * self.copies(y_set, torch.float32, POOL, rows_last=True)).square_()  # (U, 3, 256, M)
        d = (diff[:, 0] + diff[:, 1]).add_(diff[:, 2]).view(xp.shape[0], cells, cells, -1)  # (U, 16, 16, M)
        # the rows as channels, stored last: avg_pool2d's channels-last kernel sums along them (~3x faster, same bits)
        return F.avg_pool2d(d.permute(0, 3, 1, 2), size, stride=per_block, padding=r, count_include_pad=True) * size**2

    def local_weights(self, observations: list[tuple[Tensor, Tensor, float, float]], prior: Tensor, P: int
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """The per-pixel posterior over each block's candidates at 64 px: weights (B, blocks, k, b, b), the
        candidates (B, blocks, k), rows of the shifted copies, and their pixels under each block in the first
        observation's set (B, blocks, k, 3, b, b; cut from the windows gathered here). Each observation
        (x, y_set, c, var) adds -D(x, c y_set) / (2 var) to the logits, D summed over a P x P window of 64-px
        pixels; rows of the batch that share their inputs share these distances, computed once per candidate of any
        of them."""
        N, b = len(self.set), self.options.block
        first, inverse = unique_rows(torch.cat([x.flatten(1) for x, *_ in observations], dim=1))
        cand = self.candidates(observations, prior, P, first, inverse).sort(dim=2).values  # (B, nb, k)
        repeated = F.pad(cand[..., 1:] == cand[..., :-1], (1, 0))  # listed by two blocks: counted once
        union, position = shared_candidates(cand, inverse, len(first))  # (U, nb, J), (B, nb, k)
        B, nb, k = cand.shape
        valid = self.inside(P)  # (nb, L, L)
        row_of = position[..., None, None].expand(B, nb, k, b, b)
        logits = prior.gather(1, (cand % N).flatten(1)).view(B, nb, k)[..., None, None].to(self.dtype).expand(B, nb, k, b, b).clone()
        for i, (x, y_set, c, var) in enumerate(observations):
            x_padded = F.pad(x[first].to(self.dtype), (self.pad,) * 4, mode="replicate")
            x_patch = self.windows(x_padded, P).flatten(1, 2)  # (U, nb, 3, L, L)
            y_patch = self.windows(self.copies(y_set, self.dtype, pad=self.pad), P)[union, self.block_row, self.block_col]  # (U, nb, J, 3, L, L)
            if i == 0:  # the block's own pixels sit at P // 2 in its window (before the in-place ops below)
                blocks = y_patch[..., P // 2:P // 2 + b, P // 2:P // 2 + b][inverse[:, None, None], torch.arange(nb)[:, None], position]
            diff = torch.sub(x_patch[:, :, None], y_patch.mul_(c), out=y_patch).square_()  # in place: ~4x less time
            sq = (diff[:, :, :, 0] + diff[:, :, :, 1]).add_(diff[:, :, :, 2]).mul_(valid[None, :, None])  # (U, nb, J, L, L)
            logits -= (box_sum(sq, P, b) / (2 * var))[inverse].gather(2, row_of)
        return logits.masked_fill(repeated[..., None, None], -math.inf).softmax(dim=2), cand, blocks

    def block_patches(self, images: Tensor, cand: Tensor) -> Tensor:
        """The pixels of each candidate (B, nb, k) under each block, at the size of `images` (N, 3, 64 s, 64 s):
        (B, nb, k, 3, b s, b s)."""
        scale = images.shape[-1] // STAGE_1_SIZE
        bs = self.options.block * scale
        blocks = self.copies(images, scale=scale).unfold(2, bs, bs).unfold(3, bs, bs).permute(0, 2, 3, 1, 4, 5)
        return blocks[cand, self.block_row, self.block_col]

    def assemble(self, blocks: Tensor) -> Tensor:
        """(B, nb, 3, b, b) blocks in raster order -> (B, 3, H, W)."""
        B, nb, C, b, _ = blocks.shape
        per_row = int(math.isqrt(nb))
        return blocks.view(B, per_row, per_row, C, b, b).permute(0, 3, 1, 4, 2, 5).reshape(B, C, per_row * b, per_row * b)

    def mean_and_variance(self, weights: Tensor, patches: Tensor, scale: int) -> tuple[Tensor, Tensor]:
        """Per-pixel posterior mean and variance from 64-px weights (B, nb, k, b, b) and candidate pixels at
        `scale` x 64 px (B, nb, k, 3, b s, b s; used up: squared in place): each weight covers its s x s pixels."""
        if scale > 1:
            weights = weights.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        w = weights[:, :, :, None].to(patches.dtype)  # (B, nb, k, 1, bs, bs)
        mean = (w * patches).sum(2)
        second = patches.square_().mul_(w).sum(2)  # (in place: patches are this call's own)
        return self.assemble(mean), self.assemble(second - mean.square())


class LocalDenoiser(_Local):
    """Stage I: the local posterior over the 64-px set."""

    def __init__(self, image_set: ImageSet, prompts: PromptCache, description: dict, options: LocalOptions = LocalOptions()):
        super().__init__(image_set, prompts, description, STAGE_1_SIZE, options)

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: int, embeds: Tensor, noise_level: int | None = None) -> Tensor:
        """(B, 3, 64, 64) -> (B, 6, 64, 64)."""
        self._check(x_t, 3)
        abar_t = self.alphas_cumprod[t].item()
        x = x_t.detach().cpu().double()
        P, scale = self.options.at(t)
        weights, _, patches = self.local_weights([(x, self.y, math.sqrt(abar_t), 1 - abar_t)], self.prior(embeds, scale), P)
        y_hat, post_var = self.mean_and_variance(weights, patches, 1)
        return self.output(x, y_hat, learned_range_of(post_var, self.alphas_cumprod, t), t, like=x_t)


class LocalUpsampler(_Local):
    """Stage II: the local posterior over the 256-px set given x_t and z = sqrt(abar_s) up_4(y^64) + noise.

    The window distances of both observations are computed on the 64-px grid, between 4 x 4 area-pooled
    images, times 16: the part of the 256-px distance that varies between 4 x 4 cells (the within-cell part,
    the finest detail, is left out of the weights: an approximation that keeps stage II at stage I's cost).
    The per-pixel mean is then taken over the candidates' 128-px stored pixels and upsampled 2x, as the exact
    stage II does (E[up_2(y)] = up_2(E[y]) within a cell)."""

    def __init__(self, image_set: ImageSet, prompts: PromptCache, description: dict, lowres_alphas_cumprod: Tensor,
                 options: LocalOptions = LocalOptions()):
        super().__init__(image_set, prompts, description, STAGE_2_SIZE, options)
        self.lowres_alphas_cumprod = lowres_alphas_cumprod
        self.y_z = image_set.y_z.view(-1, 3, STAGE_1_SIZE, STAGE_1_SIZE)  # z's pooled mean for each image
        self.images_128 = image_set.images_128  # (N, 3, 128, 128) uint8

    @torch.no_grad()
    def __call__(self, x_in: Tensor, t: int, embeds: Tensor, noise_level: int | None = None) -> Tensor:
        """(B, 6, 256, 256) = cat(x_t, z) -> (B, 6, 256, 256)."""
        x_t, z, abar_t, abar_s = self._stage_two_inputs(x_in, t, noise_level)
        P, scale = self.options.at(t, stage=2)
        # a pooled distance sums 16 pixels' worth of squared mean difference: var / 16 per pooled pixel
        observations = [(F.avg_pool2d(x_t, 4), self.y, math.sqrt(abar_t), (1 - abar_t) / 16),
                        (F.avg_pool2d(z, 4), self.y_z, math.sqrt(abar_s), (1 - abar_s) / 16)]
        weights, cand, _ = self.local_weights(observations, self.prior(embeds, scale), P)
        patches = unit(self.block_patches(self.images_128, cand), self.dtype)
        mean_128, var_128 = self.mean_and_variance(weights, patches, STORED_SIZE // STAGE_1_SIZE)
        return self.output(x_t, up_2(mean_128), learned_range_of(up_2(var_128), self.alphas_cumprod, t),
                           t, like=x_in)
