"""The training loss of a UNet with learned-range variance: improved DDPM's hybrid loss (Nichol & Dhariwal 2021).

    L_hybrid = L_simple + lambda L_vlb,  lambda = 0.001,  L_vlb = sum_t L_t = T E_t[L_t]

L_simple (DDPM eq. 14) trains the noise channels. The variance channels v get L_t = KL(q(x_t-1 | x_t, x0) ||
p(x_t-1 | x_t)) (DDPM eq. 5) with the model mean held fixed (stop-gradient, improved DDPM sec. 3.1), so the VLB
term teaches only the variance and L_simple alone shapes the mean. The t = 0 term (the decoder likelihood) is
left out: our sampler adds no noise at its last step, so the variance at t = 0 is never used.
The KL uses the same equations as the sampler (schedule.py): a model trained here samples with exactly the
variance it was trained to predict.
"""

import math

import torch
from torch import Tensor

from .. import schedule
from ..denoiser import split_output

VLB_WEIGHT = 0.001  # lambda of improved DDPM


def normal_kl(mean_1: Tensor, log_var_1: Tensor, mean_2: Tensor, log_var_2: Tensor) -> Tensor:
    """KL(N(mean_1, var_1) || N(mean_2, var_2)), elementwise."""
    return 0.5 * (log_var_2 - log_var_1 - 1 + (log_var_1 - log_var_2).exp() + (mean_1 - mean_2) ** 2 * (-log_var_2).exp())


def hybrid_loss(out: Tensor, x0: Tensor, x_t: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor,
                vlb_weight: float = VLB_WEIGHT) -> tuple[Tensor, Tensor, Tensor]:
    """out: the UNet's (B, 6, H, W) at x_t (noise then learned-range values); x0, eps: (B, 3, H, W) with
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; t: (B,) integer timesteps. -> (loss, L_simple, L_t in bits/dim)."""
    eps_hat, v = split_output(out.float())
    l_simple = (eps - eps_hat).pow(2).mean()

    T = len(alphas_cumprod)
    shape = (-1, 1, 1, 1)
    abar_t = alphas_cumprod[t].view(shape)
    abar_prev = torch.where(t > 0, alphas_cumprod[(t - 1).clamp(min=0)], torch.ones_like(abar_t.flatten())).view(shape)
    true_mean = schedule.posterior_mean(x_t, x0, abar_t, abar_prev)
    beta_t = 1 - abar_t / abar_prev
    true_log_var = ((1 - abar_prev) / (1 - abar_t) * beta_t).clamp(min=1e-20).log()  # DDPM eq. 7
    model_mean = schedule.posterior_mean(x_t, schedule.predict_x0(x_t, eps_hat.detach(), abar_t), abar_t, abar_prev)
    model_log_var = schedule.learned_range_log_variance(v, abar_t, abar_prev)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
    l_t = (kl * (t > 0)).sum() / (t > 0).sum().clamp(min=1)
    return l_simple + vlb_weight * T * l_t, l_simple.detach(), l_t.detach()
