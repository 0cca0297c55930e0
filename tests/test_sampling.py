"""The one strided loop against diffusers (DDPMScheduler.step loop and IFPipeline), its hooks, and randomness."""

import pytest
import torch

from diffusion_post import figures, guidance, randomness, sampling, techniques
from diffusion_post.denoiser import Cascade
from diffusion_post.randomness import image_generators, image_seed

from conftest import PROMPT

STAGE_1 = sampling.Thresholding(0.95, 1.5)


def _reference_generator(seed: int, figure: str, index: int = 0) -> torch.Generator:
    """An independent copy of image_generators(seed, figure, n)[index] for the diffusers side."""
    return torch.Generator().manual_seed(image_seed(seed, figure, index))


def test_loop_equals_ddpm_scheduler_step_loop(cascade, embeds, strided, stage_1_scheduler):
    """Thresholding off: our loop and a loop of DDPMScheduler.step on set_timesteps(timesteps=strided),
    same UNet outputs, same noise stream (generator g drives x_T and every step's noise)."""
    model = guidance.conditional(cascade.stage_1, embeds[PROMPT])
    alphas_cumprod = cascade.stage_1.alphas_cumprod
    ours = techniques.sample_from_noise(model, (3, 32, 32), strided, alphas_cumprod, image_generators(0, "loop", 1))

    scheduler = stage_1_scheduler(thresholding=False, clip_sample=False)
    scheduler.set_timesteps(timesteps=strided)
    g = _reference_generator(0, "loop")
    x = torch.randn((1, 3, 32, 32), generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, int(t)), t, x, generator=g).prev_sample

    assert ours.abs().max() > 1.5  # unthresholded: a random UNet leaves [-1, 1], so thresholding would show
    assert (ours - x).abs().max() <= 1e-6 * max(1.0, x.abs().max().item())


def _if_pipeline(cascade, tiny_folders):
    from diffusers import DDPMScheduler, IFPipeline

    scheduler = DDPMScheduler.from_pretrained(tiny_folders[0], subfolder="scheduler")
    pipe = IFPipeline(unet=cascade.stage_1.unet, scheduler=scheduler, tokenizer=None, text_encoder=None, safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_guided_loop_with_thresholding_equals_ifpipeline(cascade, embeds, strided, tiny_folders):
    """CFG (gamma 7, one batched UNet call, conditional variance kept) and dynamic thresholding (0.95, 1.5)
    against IFPipeline with the same timesteps; two images, one generator each, as the pipeline takes them."""
    cond, uncond = embeds[PROMPT], embeds[""]
    model = guidance.classifier_free(cascade.stage_1, cond, uncond, 7.0)
    alphas_cumprod = cascade.stage_1.alphas_cumprod
    ours = techniques.sample_from_noise(model, (3, 32, 32), strided, alphas_cumprod, image_generators(0, "cfg", 2),
                                        thresholding=STAGE_1)

    pipe = _if_pipeline(cascade, tiny_folders)
    theirs = pipe(prompt_embeds=cond.expand(2, -1, -1), negative_prompt_embeds=uncond.expand(2, -1, -1),
                  timesteps=strided, guidance_scale=7.0, output_type="pt",
                  generator=[_reference_generator(0, "cfg", i) for i in range(2)]).images
    assert theirs.shape == ours.shape == (2, 3, 32, 32)
    assert (ours - theirs).abs().max() <= 1e-5

    # the comparison discriminates: without thresholding, or with another guidance scale, we would be far off
    unthresholded = techniques.sample_from_noise(model, (3, 32, 32), strided, alphas_cumprod, image_generators(0, "cfg", 2))
    assert (unthresholded - theirs).abs().max() > 1e-2
    weaker = techniques.sample_from_noise(guidance.classifier_free(cascade.stage_1, cond, uncond, 6.0), (3, 32, 32), strided,
                                          alphas_cumprod, image_generators(0, "cfg", 2), thresholding=STAGE_1)
    assert (weaker - theirs).abs().max() > 1e-3


def test_callback_and_projection_see_every_step(cascade, embeds, short):
    """Each step: posterior mean, noise, then the projection (once, with t'), then the callback sees its result."""
    model = guidance.conditional(cascade.stage_1, embeds[PROMPT])
    seen, projected = [], []

    def projection(x, t_prev):
        projected.append((t_prev, x.clone()))
        return x * 0.5

    def callback(i, t, x, x0_hat):
        assert x.shape == x0_hat.shape == (1, 3, 32, 32)
        assert torch.equal(x, projected[-1][1] * 0.5)
        seen.append((i, t))

    techniques.sample_from_noise(model, (3, 32, 32), short, cascade.stage_1.alphas_cumprod, image_generators(0, "hooks", 1),
                                 callback=callback, projection=projection)
    assert seen == list(enumerate(short))
    assert [t_prev for t_prev, _ in projected] == short[1:] + [-1]


def test_progression_recorder_keeps_every_nth_step(strided):
    record, frames = techniques.progression_recorder(every=5)
    for i, t in enumerate(strided[10:]):  # the post's strip: from t=690, x after 5, 10, 15, 20 steps
        record(i, t, torch.full((1, 3, 2, 2), float(i)), torch.zeros(1, 3, 2, 2))
    assert [f[0, 0, 0, 0].item() for f in frames] == [4, 9, 14, 19]


# --- randomness --------------------------------------------------------------------------------------------------

def _cfg_samples(cascade, embeds, timesteps, generators, scale: float | None = 7.0):
    if scale is None:
        model = guidance.conditional(cascade.stage_1, embeds[PROMPT])
    else:
        model = guidance.classifier_free(cascade.stage_1, embeds[PROMPT], embeds[""], scale)
    return techniques.sample_from_noise(model, (3, 32, 32), timesteps, cascade.stage_1.alphas_cumprod, generators,
                                        thresholding=STAGE_1)


def test_same_seed_gives_bit_identical_images(cascade, embeds, short):
    first = _cfg_samples(cascade, embeds, short, image_generators(100, "fig", 2))
    torch.manual_seed(12345)  # the global RNG plays no part
    torch.randn(10)
    second = _cfg_samples(cascade, embeds, short, image_generators(100, "fig", 2))
    assert torch.equal(first, second)
    other_seed = _cfg_samples(cascade, embeds, short, image_generators(101, "fig", 2))
    assert not torch.allclose(first, other_seed, atol=1e-2)
    assert not torch.allclose(first[0], first[1], atol=1e-2)  # images of one figure differ from each other


@pytest.mark.parametrize("scale, atol", [(None, 1e-5), (7.0, 1e-4)])
def test_batched_samples_equal_one_at_a_time(cascade, embeds, short, scale, atol):
    """The UNet itself differs by ~2e-6 between batch sizes on the CPU (measured), and CFG multiplies that by
    1 + gamma, hence the looser tolerance with guidance; a noise row drawn from the wrong generator is O(1)."""
    batched = _cfg_samples(cascade, embeds, short, image_generators(100, "batch", 3), scale)
    for i in range(3):
        alone = _cfg_samples(cascade, embeds, short, [image_generators(100, "batch", 3)[i]], scale)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=0, atol=atol)


class BatchSpy:
    """A denoiser that records the batch size of every call and passes it on."""

    def __init__(self, denoiser):
        self.denoiser, self.batches = denoiser, []

    def __getattr__(self, name):
        return getattr(self.denoiser, name)

    def __call__(self, x_t, t, embeds, **kwargs):
        self.batches.append(x_t.shape[0])
        return self.denoiser(x_t, t, embeds, **kwargs)


def _figure_images(cascade, name: str, count: int, technique: str = "sample") -> torch.Tensor:
    spec = {"technique": technique, "prompt": PROMPT, "prompts": [PROMPT, "a cat"], "views": ["identity", "flip"],
            "factorization": "low_high", "kernel_size": 5, "sigma": 1.0, "count": count, "seed": 100, "start": 990,
            "stride": 90, "guidance_scale": 7.0, "unconditional_prompt": "", "thresholding": True}
    return figures.make(figures.Context(cascade=cascade, name=name, spec=spec))["images"]


@pytest.mark.parametrize("technique", ["sample", "anagram", "hybrid"])
def test_each_image_is_made_by_its_own_denoiser_calls(cascade, technique):
    """The contract that makes `count` harmless on every CPU: no denoiser call ever holds two images of a figure
    (CPU kernels change with the batch size, so batching would change image 0 when `count` changes). CFG
    doubles the batch and an anagram's views multiply it: the batch of one image is the same for every count."""
    spy = BatchSpy(cascade.stage_1)
    spied = Cascade(spy, cascade.stage_2, cascade.description)
    _figure_images(spied, "fig", 1, technique)
    one = set(spy.batches)
    spy.batches.clear()
    _figure_images(spied, "fig", 3, technique)
    assert set(spy.batches) == one and len(one) == 1, (one, set(spy.batches))


def test_an_image_does_not_depend_on_other_figures(cascade):
    """Bit-identical on any CPU (same machine and libraries): each image has its own generator and its own
    denoiser calls, so neither another figure nor its own figure's `count` touches its bytes."""
    before = _figure_images(cascade, "fig_a", 2)
    _figure_images(cascade, "fig_b", 3)  # another figure made in between
    after = _figure_images(cascade, "fig_a", 2)
    assert torch.equal(before, after)
    assert torch.equal(_figure_images(cascade, "fig_a", 1), before[:1])
    assert not torch.allclose(before[0], before[1], atol=1e-2)


def test_the_last_step_adds_no_noise_whatever_timestep_it_starts_from(cascade, embeds):
    """iterative_levels from t = 250 by 30 ends at t = 10: its last step goes to the clean image, whose posterior
    variance is 0, so it must not draw noise (before: it added noise of the learned variance at t = 10)."""
    model = guidance.conditional(cascade.stage_1, embeds[PROMPT])
    x = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    alphas_cumprod = cascade.stage_1.alphas_cumprod
    last = [sampling.sample(model, x, [10], alphas_cumprod, image_generators(0, name, 1)) for name in ("a", "b")]
    assert torch.equal(last[0], last[1])  # the generator plays no part
    two = [sampling.sample(model, x, [130, 10], alphas_cumprod, image_generators(0, name, 1)) for name in ("a", "b")]
    assert not torch.allclose(two[0], two[1], atol=1e-3)  # the step 130 -> 10 does draw noise


def test_randn_draws_row_b_from_generator_b():
    gens = image_generators(7, "rows", 3)
    noise = randomness.randn((2, 4, 4), gens)
    for b in range(3):
        expected = torch.randn((1, 2, 4, 4), generator=_reference_generator(7, "rows", b))
        assert torch.equal(noise[b:b + 1], expected)
    assert len({image_seed(7, f, i) for f in ("a", "b") for i in range(50)}) == 100
