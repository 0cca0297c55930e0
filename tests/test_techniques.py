"""The techniques of the post on the tiny cascade: forward process, one-step and iterative denoising, SDEdit,
inpainting, visual anagrams, hybrids and stage II."""

import pytest
import torch

from diffusion_post import guidance, schedule, techniques
from diffusion_post.denoiser import StageTwo
from diffusion_post.filters import FACTORIZATIONS, factorization
from diffusion_post.randomness import image_generators, image_seed
from diffusion_post.sampling import Thresholding
from diffusion_post.views import Flip, Identity, get_view

from conftest import OTHER_PROMPTS, PROMPT

STAGE_1 = Thresholding(0.95, 1.5)


def _test_image(size: int = 32) -> torch.Tensor:
    """A smooth image in [-1, 1] with structure in every channel, (1, 3, size, size)."""
    r = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xx, yy, (3 * xx * yy).sin()])[None] * 0.9


# --- forward process and one-step denoising -----------------------------------------------------------------------

@pytest.mark.parametrize("t", [250, 500, 750])
def test_forward_process_has_the_right_mean_and_variance(cascade, t):
    """Over 2000 draws per pixel: E[x_t] = sqrt(abar_t) x0 and Var[x_t] = 1 - abar_t."""
    x0 = _test_image(8)
    abar_t = cascade.stage_1.alphas_cumprod[t].item()
    x_t = techniques.forward_process(x0.expand(2000, -1, -1, -1), t, cascade.stage_1.alphas_cumprod,
                                     image_generators(0, f"forward_{t}", 2000))
    mean, var = x_t.mean(dim=0), x_t.var(dim=0)
    slope = (mean * x0[0]).sum() / (x0[0] ** 2).sum()  # least squares fit of the mean against x0
    assert abs(slope - abar_t**0.5) < 0.01, (slope, abar_t**0.5)
    assert (mean - abar_t**0.5 * x0[0]).abs().max() < 5 * ((1 - abar_t) / 2000) ** 0.5
    assert abs(var.mean() - (1 - abar_t)) < 0.01 * (1 - abar_t) + 0.002, (var.mean(), 1 - abar_t)


@pytest.mark.parametrize("t", [250, 500, 750, 990])
def test_one_step_denoising_with_the_true_noise_returns_x0(cascade, t):
    x0 = _test_image()
    alphas_cumprod = cascade.stage_1.alphas_cumprod
    x_t = techniques.forward_process(x0, t, alphas_cumprod, image_generators(0, "one_step", 1))
    eps = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(image_seed(0, "one_step", 0)))
    torch.testing.assert_close(x_t, schedule.add_noise(x0, eps, alphas_cumprod[t]))  # the noise we claim it drew

    def true_noise(x, t_):
        assert t_ == t
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    x0_hat = techniques.one_step_denoise(true_noise, x_t, t, alphas_cumprod)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-5 / alphas_cumprod[t].item() ** 0.5)


def test_blur_denoise_is_a_lowpass():
    noisy = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    blurred = techniques.blur_denoise(noisy, 5, 2.0)
    assert blurred.shape == noisy.shape and blurred.std() < 0.5 * noisy.std()


# --- iterative denoising, SDEdit, inpainting ----------------------------------------------------------------------

def test_iterative_denoise_starts_at_i_start(cascade, embeds, strided):
    model = guidance.classifier_free(cascade.stage_1, embeds[PROMPT], embeds[""], 7.0)
    alphas_cumprod = cascade.stage_1.alphas_cumprod
    seen = []
    x_t = techniques.forward_process(_test_image(), strided[28], alphas_cumprod, image_generators(0, "iter", 1))
    out = techniques.iterative_denoise(model, x_t, strided, 28, alphas_cumprod, image_generators(0, "iter", 1),
                                       callback=lambda i, t, x, x0: seen.append(t), thresholding=STAGE_1)
    assert seen == strided[28:] and out.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="i_start=34 is outside"):
        techniques.iterative_denoise(model, x_t, strided, 34, alphas_cumprod, image_generators(0, "iter", 1))


def test_sdedit_stays_closer_to_the_input_the_later_it_starts(cascade, embeds, strided):
    model = guidance.classifier_free(cascade.stage_1, embeds[PROMPT], embeds[""], 7.0)
    x0 = _test_image()

    def distance(i_start):
        edit = techniques.sdedit(model, x0, strided, i_start, cascade.stage_1.alphas_cumprod,
                                 image_generators(0, "sdedit", 1), thresholding=STAGE_1)
        return (edit - x0).abs().mean().item()

    distances = [distance(i_start) for i_start in (33, 31, 20, 10)]  # t = 0, 60, 390, 690
    assert distances[0] < 0.05, distances
    assert distances == sorted(distances) and distances[-1] > 0.3, distances


def test_inpainting_keeps_the_unmasked_region_exactly(cascade, embeds, short):
    model = guidance.classifier_free(cascade.stage_1, embeds[PROMPT], embeds[""], 7.0)
    x0 = _test_image()
    mask = torch.zeros((1, 1, 32, 32))
    mask[..., 1:10, 12:21] = 1  # 1 = new content (the course's [2:20, 24:42] box, halved)
    out = techniques.inpaint(model, x0, mask, short, cascade.stage_1.alphas_cumprod, image_generators(0, "inpaint", 2),
                             thresholding=STAGE_1)
    keep = (mask == 0).expand_as(out)
    assert torch.equal(out[keep], x0.expand_as(out)[keep])  # flipping the mask breaks this
    new = ~keep
    assert (out[new] - x0.expand_as(out)[new]).abs().mean() > 0.1  # and the hole holds new content


# --- visual anagrams ----------------------------------------------------------------------------------------------

def test_anagram_with_the_identity_view_is_plain_cfg(cascade, embeds, short):
    cond, uncond = embeds[PROMPT], embeds[""]
    plain = guidance.classifier_free(cascade.stage_1, cond, uncond, 7.0)
    anagram = guidance.anagram(cascade.stage_1, [Identity()], cond, uncond, 7.0)
    x = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    for t in (990, 500, 0):
        assert torch.equal(anagram(x, t), plain(x, t))
    alphas_cumprod = cascade.stage_1.alphas_cumprod
    a, b = (techniques.sample_from_noise(model, (3, 32, 32), short, alphas_cumprod, image_generators(0, "id", 1),
                                         thresholding=STAGE_1) for model in (anagram, plain))
    assert torch.equal(a, b)


class _Recorder:
    """Wraps a denoiser and records (batch, input channels, noise_level) of every call."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []
        self.sample_size, self.alphas_cumprod = denoiser.sample_size, denoiser.alphas_cumprod

    def __call__(self, x, t, embeds, **kwargs):
        self.calls.append((x.shape[0], x.shape[1], kwargs.get("noise_level")))
        return self.denoiser(x, t, embeds, **kwargs)

    @property
    def batches(self) -> list[int]:
        return [batch for batch, _, _ in self.calls]


def test_three_view_anagram_is_one_batched_call_and_pairs_views_with_prompts(cascade, embeds, short):
    names = ["identity", "flip", "rotate_cw"]
    views = [get_view(n) for n in names]
    prompts = [PROMPT, *OTHER_PROMPTS]
    conds, uncond = torch.cat([embeds[p] for p in prompts]), embeds[""]
    recorder = _Recorder(cascade.stage_1)
    anagram = guidance.anagram(recorder, views, conds, uncond, 7.0)
    x = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    out = anagram(x, 500)
    assert recorder.batches == [2 * 3 * 2]  # one UNet call: CFG halves x views x images

    per_view = [view.inverse_view(guidance.classifier_free(cascade.stage_1, embeds[p], uncond, 7.0)(view.view(x), 500))
                for view, p in zip(views, prompts)]
    torch.testing.assert_close(out, torch.stack(per_view).mean(dim=0), rtol=0, atol=1e-4)

    images = techniques.sample_from_noise(anagram, (3, 32, 32), short, cascade.stage_1.alphas_cumprod,
                                          image_generators(0, "anagram3", 2), thresholding=STAGE_1)
    assert images.shape == (2, 3, 32, 32) and images.isfinite().all()


def test_anagram_needs_one_prompt_per_view(cascade, embeds):
    conds = torch.cat([embeds[PROMPT], embeds[OTHER_PROMPTS[0]]])
    with pytest.raises(ValueError, match="anagram needs one prompt per view: got 2 prompts, 3 views"):
        guidance.anagram(cascade.stage_1, [Identity(), Flip(), get_view("rotate_180")], conds, embeds[""], 7.0)


# --- hybrids (factorized diffusion) -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FACTORIZATIONS)
def test_hybrid_with_equal_prompts_is_plain_cfg(cascade, embeds, name):
    components = factorization(name)
    cond, uncond = embeds[PROMPT], embeds[""]
    hybrid = guidance.factorized(cascade.stage_1, components, cond.expand(len(components), -1, -1), uncond, 7.0)
    plain = guidance.classifier_free(cascade.stage_1, cond, uncond, 7.0)
    x = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    for t in (990, 500):
        torch.testing.assert_close(hybrid(x, t), plain(x, t), rtol=0, atol=1e-4)


def test_hybrid_sends_each_prompt_through_its_own_filter(cascade, embeds):
    low, high = factorization("low_high")
    cond_low, cond_high, uncond = embeds[PROMPT], embeds[OTHER_PROMPTS[0]], embeds[""]
    recorder = _Recorder(cascade.stage_1)
    hybrid = guidance.factorized(recorder, [low, high], torch.cat([cond_low, cond_high]), uncond, 7.0)
    x = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    out = hybrid(x, 500)
    assert recorder.batches == [2 * 2 * 2]
    eps_low, v_low = guidance.classifier_free(cascade.stage_1, cond_low, uncond, 7.0)(x, 500).chunk(2, dim=1)
    eps_high, v_high = guidance.classifier_free(cascade.stage_1, cond_high, uncond, 7.0)(x, 500).chunk(2, dim=1)
    expected = torch.cat([low(eps_low) + high(eps_high), (v_low + v_high) / 2], dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_hybrid_needs_one_prompt_per_component(cascade, embeds):
    with pytest.raises(ValueError, match="got 1 prompts, 3 components"):
        guidance.factorized(cascade.stage_1, factorization("triple_band"), embeds[PROMPT], embeds[""], 7.0)


# --- stage II -----------------------------------------------------------------------------------------------------

def test_upsample_equals_if_superresolution_pipeline(cascade, embeds, tiny_folders):
    """Stage II with CFG 4 and thresholding (0.95, 1.0) against diffusers' IFSuperResolutionPipeline
    (4 steps: the 64-px stage II is the slowest model of the suite)."""
    timesteps = schedule.strided_timesteps(990, 330)
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline

    cond, uncond = embeds[PROMPT], embeds[""]
    x_low = _test_image().expand(2, -1, -1, -1)
    ours = techniques.upsample(cascade.stage_2, lambda d: guidance.classifier_free(d, cond, uncond, 4.0), x_low, timesteps,
                               image_generators(0, "up", 2), noise_level=250, thresholding=Thresholding(0.95, 1.0))
    stage_2 = tiny_folders[1]
    pipe = IFSuperResolutionPipeline(
        unet=cascade.stage_2.denoiser.unet, scheduler=DDPMScheduler.from_pretrained(stage_2, subfolder="scheduler"),
        image_noising_scheduler=DDPMScheduler.from_pretrained(stage_2, subfolder="image_noising_scheduler"),
        tokenizer=None, text_encoder=None, safety_checker=None, feature_extractor=None, watermarker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(image=x_low, prompt_embeds=cond.expand(2, -1, -1), negative_prompt_embeds=uncond.expand(2, -1, -1),
                  timesteps=timesteps, guidance_scale=4.0, noise_level=250, output_type="pt",
                  generator=[torch.Generator().manual_seed(image_seed(0, "up", i)) for i in range(2)]).images
    assert ours.shape == theirs.shape == (2, 3, 64, 64)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["views", "factorization"])
def test_upsample_runs_with_views_and_factorizations(cascade, embeds, kind):
    conds, uncond = torch.cat([embeds[PROMPT], embeds[OTHER_PROMPTS[0]]]), embeds[""]
    if kind == "views":
        make_model = lambda d: guidance.anagram(d, [Identity(), Flip()], conds, uncond, 4.0)
    else:
        make_model = lambda d: guidance.factorized(d, factorization("low_high"), conds, uncond, 4.0)
    recorder = _Recorder(cascade.stage_2.denoiser)
    stage_2 = StageTwo(recorder, cascade.stage_2.lowres_alphas_cumprod)
    out = techniques.upsample(stage_2, make_model, _test_image(), [990, 500, 0], image_generators(0, f"up_{kind}", 1),
                              thresholding=Thresholding(0.95, 1.0))
    assert out.shape == (1, 3, 64, 64) and out.isfinite().all()
    # one call per step: CFG halves x 2 components; input (x_t, noised upsampled image); the noise level
    assert recorder.calls == [(2 * 2, 6, 250)] * 3
