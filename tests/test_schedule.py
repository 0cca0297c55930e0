"""The schedule arithmetic held against diffusers' DDPMScheduler with the (tiny) IF stage-I config."""

import pytest
import torch

from diffusion_post import schedule


def test_strided_timesteps_are_the_posts_schedule():
    timesteps = schedule.strided_timesteps(990, 30)
    assert len(timesteps) == 34
    assert timesteps[:3] == [990, 960, 930] and timesteps[-1] == 0
    assert timesteps[10::5] == [690, 540, 390, 240, 90]  # the post's iterative-denoising strip
    assert schedule.strided_timesteps(100, 30) == [100, 70, 40, 10]
    with pytest.raises(ValueError, match="stride > 0"):
        schedule.strided_timesteps(990, 0)


@pytest.mark.parametrize("num_steps", [20, 100])
def test_evenly_spaced_timesteps_are_diffusers_defaults(stage_1_scheduler, num_steps):
    scheduler = stage_1_scheduler()
    scheduler.set_timesteps(num_steps)
    assert schedule.evenly_spaced_timesteps(num_steps) == scheduler.timesteps.tolist()


def test_cascade_schedules_are_the_schedulers(cascade, tiny_folders):
    from diffusers import DDPMScheduler

    stage_1, stage_2 = tiny_folders
    scheduler_1 = DDPMScheduler.from_pretrained(stage_1, subfolder="scheduler")
    assert torch.equal(cascade.stage_1.alphas_cumprod, scheduler_1.alphas_cumprod)
    assert torch.equal(cascade.stage_2.denoiser.alphas_cumprod,
                       DDPMScheduler.from_pretrained(stage_2, subfolder="scheduler").alphas_cumprod)
    noising = DDPMScheduler.from_pretrained(stage_2, subfolder="image_noising_scheduler")
    assert torch.equal(cascade.stage_2.lowres_alphas_cumprod, noising.alphas_cumprod)


def test_abar_past_the_end_is_one(cascade):
    alphas_cumprod = cascade.stage_1.alphas_cumprod
    assert schedule.abar(alphas_cumprod, -1).item() == 1.0
    assert schedule.abar(alphas_cumprod, 500).item() == alphas_cumprod[500].item()


def test_add_noise_matches_diffusers(stage_1_scheduler):
    scheduler = stage_1_scheduler()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand((2, 3, 8, 8), generator=g) * 2 - 1, torch.randn((2, 3, 8, 8), generator=g)
    for t in (0, 250, 500, 750, 999):
        ours = schedule.add_noise(x0, eps, schedule.abar(scheduler.alphas_cumprod, t))
        theirs = scheduler.add_noise(x0, eps, torch.tensor([t, t]))
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_learned_range_variance_matches_diffusers_at_every_strided_step(stage_1_scheduler, strided):
    scheduler = stage_1_scheduler()
    scheduler.set_timesteps(timesteps=strided)  # _get_variance looks the next timestep up in this list
    g = torch.Generator().manual_seed(1)
    for i, t in enumerate(strided):
        t_prev = strided[i + 1] if i + 1 < len(strided) else -1
        v = torch.rand((2, 3, 8, 8), generator=g) * 2 - 1
        ours = schedule.learned_range_log_variance(v, schedule.abar(scheduler.alphas_cumprod, t),
                                                   schedule.abar(scheduler.alphas_cumprod, t_prev))
        theirs = scheduler._get_variance(t, predicted_variance=v)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-5, msg=f"log variance at t={t}")
        # and the interpolation runs the right way: v = +1 -> log beta_t, v = -1 -> log beta_tilde_t
        ends = schedule.learned_range_log_variance(torch.tensor([1.0, -1.0]), schedule.abar(scheduler.alphas_cumprod, t),
                                                   schedule.abar(scheduler.alphas_cumprod, t_prev))
        assert ends[0] >= ends[1]


def test_one_step_matches_ddpm_scheduler_step_at_every_strided_step(stage_1_scheduler, strided):
    """x0_hat (DDPM eq. 15), the posterior mean (eq. 7) and the noise term of one step, against
    DDPMScheduler.step with thresholding and clipping off, for random model outputs."""
    scheduler = stage_1_scheduler(thresholding=False, clip_sample=False)
    scheduler.set_timesteps(timesteps=strided)
    alphas_cumprod = scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(2)
    for i, t in enumerate(strided):
        t_prev = strided[i + 1] if i + 1 < len(strided) else -1
        x_t, out = torch.randn((1, 3, 8, 8), generator=g), torch.randn((1, 6, 8, 8), generator=g).clamp(-3, 3)
        out[:, 3:] = out[:, 3:].tanh()  # learned-range values live in [-1, 1]
        seed = 1000 + i
        theirs = scheduler.step(out, t, x_t, generator=torch.Generator().manual_seed(seed))

        abar_t, abar_prev = schedule.abar(alphas_cumprod, t), schedule.abar(alphas_cumprod, t_prev)
        x0_hat = schedule.predict_x0(x_t, out[:, :3], abar_t)
        ours = schedule.posterior_mean(x_t, x0_hat, abar_t, abar_prev)
        if t > 0:
            z = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(seed))
            ours = ours + (0.5 * schedule.learned_range_log_variance(out[:, 3:], abar_t, abar_prev)).exp() * z
        scale = max(1.0, x0_hat.abs().max().item())
        torch.testing.assert_close(x0_hat, theirs.pred_original_sample, rtol=0, atol=1e-6 * scale, msg=f"x0_hat at t={t}")
        torch.testing.assert_close(ours, theirs.prev_sample, rtol=0, atol=1e-6 * scale, msg=f"x_t' at t={t}")


def test_dynamic_threshold_matches_diffusers(stage_1_scheduler):
    scheduler = stage_1_scheduler()  # thresholding=True, ratio 0.95, max 1.5
    g = torch.Generator().manual_seed(3)
    x0_hat = torch.randn((3, 3, 8, 8), generator=g) * torch.tensor([0.3, 1.2, 3.0])[:, None, None, None]
    ours = schedule.dynamic_threshold(x0_hat, 0.95, 1.5)
    theirs = scheduler._threshold_sample(x0_hat.clone())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    assert torch.equal(ours[0], x0_hat[0])  # below 1: untouched (s clamps to 1, nothing clips)
    assert ours.abs().max() <= 1.0 and not torch.equal(ours[2], x0_hat[2])


@pytest.mark.parametrize("n", [1, 2, 7, 192, 3 * 256 * 256])
@pytest.mark.parametrize("q", [0.0, 0.123, 0.5, 0.95, 0.995, 1.0])
def test_quantile_is_torchs(n, q):
    """The same float32 numbers as torch.quantile (a rank or weight computed in float64 differs at q = 0.95)."""
    x = torch.randn((3, n), generator=torch.Generator().manual_seed(n)).abs()
    assert torch.equal(schedule.quantile(x, q), torch.quantile(x, q, dim=1))


def test_quantile_of_a_row_that_is_not_finite_is_nan_as_torchs():
    x = torch.tensor([[1.0, 2.0, float("nan"), 4.0], [1.0, 2.0, 3.0, 4.0], [float("inf"), 1.0, 2.0, 3.0]])
    ours, theirs = schedule.quantile(x, 0.95), torch.quantile(x, 0.95, dim=1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    assert ours.isnan().tolist() == [True, False, True]
