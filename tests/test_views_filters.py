"""Views (visual anagrams) and filters/factorizations (hybrids): small pure functions, checked by their properties."""

import pytest
import torch

from diffusion_post import filters
from diffusion_post.spec import COMPONENTS
from diffusion_post.denoiser import join_output, split_output
from diffusion_post.views import VIEWS, Negate, get_view

NAMES = sorted(VIEWS)
SPATIAL = [n for n in NAMES if n != "negate"]


def _rand(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _equivariant_model(x):
    """A model every registered view commutes with: pointwise (so it commutes with any rearrangement of pixels),
    with an odd noise estimate and an even variance (so that eps(-x) = -eps(x), v(-x) = v(x)). (B, 3) -> (B, 6)."""
    return join_output(torch.sin(x) + x**3, torch.cos(x).tanh())


@pytest.mark.parametrize("name", NAMES)
def test_inverse_view_of_the_model_at_the_view_is_the_model(name):
    """inverse_view(model(view(x))) == model(x) on all 6 output channels: the property an anagram relies on."""
    view, x = get_view(name), _rand(2, 3, 8, 8)
    torch.testing.assert_close(view.inverse_view(_equivariant_model(view.view(x))), _equivariant_model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SPATIAL)
def test_spatial_views_are_inverted_by_their_inverse_on_six_channels(name):
    view, out = get_view(name), _rand(2, 6, 8, 8, seed=1)
    assert torch.equal(view.inverse_view(view.view(out)), out)
    assert torch.equal(view.view(view.inverse_view(out)), out)


@pytest.mark.parametrize("name", NAMES)
def test_views_are_pure_and_not_trivial(name):
    view, x = get_view(name), _rand(2, 6, 8, 8, seed=2)
    copy = x.clone()
    viewed, back = view.view(x), view.inverse_view(x)
    assert torch.equal(x, copy)  # no in-place change
    assert viewed.shape == back.shape == x.shape
    if name != "identity":
        assert not torch.equal(viewed, x)


def test_negate_flips_the_input_and_only_the_noise_of_the_output():
    x, out = _rand(1, 3, 4, 4), _rand(1, 6, 4, 4, seed=1)
    assert torch.equal(Negate().view(x), -x)
    eps_hat, v = split_output(Negate().inverse_view(out))
    assert torch.equal(eps_hat, -out[:, :3]) and torch.equal(v, out[:, 3:])


def test_flip_is_upside_down_and_rotations_turn_the_right_way():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]  # [[a, b], [c, d]]
    assert get_view("flip").view(x)[0, 0].tolist() == [[3, 4], [1, 2]]
    assert get_view("rotate_cw").view(x)[0, 0].tolist() == [[3, 1], [4, 2]]
    assert get_view("rotate_ccw").view(x)[0, 0].tolist() == [[2, 4], [1, 3]]
    assert get_view("rotate_180").view(x)[0, 0].tolist() == [[4, 3], [2, 1]]


def test_unknown_view_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown view 'upside_down': use one of .*flip"):
        get_view("upside_down")


# --- filters ------------------------------------------------------------------------------------------------------

def test_gaussian_kernel_is_normalized_symmetric_and_gaussian():
    k = filters.gaussian_kernel(5, 2.0)
    assert k.shape == (5,) and abs(k.sum().item() - 1) < 1e-12 and torch.equal(k, k.flip(0))
    torch.testing.assert_close(k[1] / k[2], torch.tensor(torch.exp(torch.tensor(-1 / 8)).item(), dtype=k.dtype))
    for bad in [(4, 2.0), (5, 0.0)]:
        with pytest.raises(ValueError, match="odd kernel_size"):
            filters.gaussian_kernel(*bad)


def test_gaussian_blur_is_a_2d_gaussian_convolution():
    x = _rand(1, 3, 16, 16)
    blurred = filters.gaussian_blur(x, 5, 1.5)
    k = filters.gaussian_kernel(5, 1.5)
    k2 = (k[:, None] * k[None, :]).to(x)
    direct = torch.nn.functional.conv2d(x, k2.expand(3, 1, 5, 5), groups=3)  # valid region only
    torch.testing.assert_close(blurred[..., 2:-2, 2:-2], direct, rtol=0, atol=1e-12)
    assert torch.allclose(filters.gaussian_blur(torch.full((1, 3, 16, 16), 0.7), 7, 2.0), torch.tensor(0.7))


@pytest.mark.parametrize("name", filters.FACTORIZATIONS)
def test_factorization_components_sum_to_the_identity_and_are_not_trivial(name):
    x = _rand(2, 3, 64, 64, seed=3)
    components = filters.factorization(name)
    assert len(components) == len(COMPONENTS[name])  # what config validation counts prompts against
    parts = [f(x) for f in components]
    torch.testing.assert_close(sum(parts), x, rtol=0, atol=1e-12)
    for part in parts:
        assert part.shape == x.shape and 0.01 < part.abs().mean() / x.abs().mean() < 0.99


def test_low_high_split_by_frequency():
    low, high = filters.factorization("low_high")
    constant = torch.full((1, 3, 64, 64), 0.5, dtype=torch.float64)
    torch.testing.assert_close(low(constant), constant)  # a constant is all low frequency
    assert high(constant).abs().max() < 1e-12
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1  # the highest frequency
    checker = checker.expand(1, 3, 64, 64).double()
    assert low(checker).abs().max() < 1e-3 and (high(checker) - checker).abs().max() < 1e-3


def test_triple_band_orders_low_middle_high():
    low, middle, high = filters.factorization("triple_band")
    smooth = torch.linspace(-1, 1, 64, dtype=torch.float64).expand(1, 3, 64, 64)
    assert low(smooth).sub(smooth)[..., 16:48, 16:48].abs().max() < 1e-6  # a linear ramp survives the low pass
    assert high(smooth)[..., 16:48, 16:48].abs().max() < 1e-6


def test_gray_color_split():
    gray, color = filters.factorization("gray_color")
    x = _rand(2, 3, 8, 8)
    g = gray(x)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    assert color(x).mean(dim=1).abs().max() < 1e-12  # the color residual has no gray part


def test_unknown_factorization_names_the_known_ones():
    with pytest.raises(ValueError, match="use one of low_high, triple_band, gray_color"):
        filters.factorization("motion")


def test_anagram_animation_turns_the_image_into_its_view_on_a_white_background(tmp_path):
    """The GIF of layout.animation: it starts at the image, reaches its upside-down view, and the turned frames'
    background is white even for an image with no light colour (one shared palette for every frame)."""
    import numpy as np
    from PIL import Image, ImageSequence

    from diffusion_post import layout
    from diffusion_post.images import save_result

    image = torch.full((1, 3, 32, 32), -0.8)
    image[:, 0, :16] = 0.5  # top half red-ish, bottom half dark: upside down differs
    image[:, 2, 16:] = 0.4
    save_result({"samples": image}, tmp_path / "anagram.safetensors", {"technique": "visual_anagram"})
    layout.animation(tmp_path / "anagram.safetensors", tmp_path / "anagram.gif", ["identity", "flip"], frames=4, hold=2)

    frames = [np.asarray(f.convert("RGB"), dtype=float) for f in ImageSequence.Iterator(Image.open(tmp_path / "anagram.gif"))]
    upright = (image[0].permute(1, 2, 0).numpy() / 2 + 0.5) * 255
    rms = lambda a, b: float(np.sqrt(((a - b) ** 2).mean()))
    assert rms(frames[0], upright) < 2
    assert min(rms(f, upright[::-1]) for f in frames) < 2 and rms(upright[::-1], upright) > 50
    assert max(f[0].min() for f in frames) >= 250  # a turned frame's top row is background, white
