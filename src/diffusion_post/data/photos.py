"""Photographic material for the ideal backend's set: crops at several scales of the sample photos that
scikit-image, scikit-learn and matplotlib ship inside their wheels, captioned by their source.

Without photographic patches a photo outside the set can only be rebuilt from emoji pieces (a collage); with
them the local denoiser finds sky, fur, bricks and grass at every scale. Licences (also in the README):
scikit-image astronaut, rocket, hubble_deep_field: public domain (NASA, SpaceX); chelsea, coffee: CC0;
brick, grass, gravel: CC0 (CC0Textures, DeviantArt); scikit-learn china.jpg: CC-BY 2.0 (danielbuechele on
Flickr); matplotlib grace_hopper.jpg: public domain (U.S. Navy). scikit-learn's flower.jpg is deliberately
left out: the quality benchmark uses it as a photo the project does not ship.
"""

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image

from .emoji_set import SIZE, fit_square

# (package, folder inside it, file, caption, licence)
SOURCES = [
    ("skimage", "data", "astronaut.png", "photo of an astronaut in front of a flag", "public domain (NASA)"),
    ("skimage", "data", "rocket.jpg", "photo of a rocket on a launch pad at dusk", "public domain (SpaceX)"),
    ("skimage", "data", "chelsea.png", "photo of a cat", "CC0 (Stefan van der Walt)"),
    ("skimage", "data", "coffee.png", "photo of a cup of coffee", "CC0 (Rachel Michetti)"),
    ("skimage", "data", "hubble_deep_field.jpg", "photo of galaxies in the night sky", "public domain (NASA)"),
    ("skimage", "data", "brick.png", "photo of a brick wall", "CC0 (CC0Textures)"),
    ("skimage", "data", "grass.png", "photo of grass", "CC0 (DeviantArt, linolafett)"),
    ("skimage", "data", "gravel.png", "photo of gravel", "CC0 (CC0Textures)"),
    ("sklearn", "datasets/images", "china.jpg", "photo of a temple roof and trees", "CC-BY 2.0 (danielbuechele, Flickr)"),
    ("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg", "photo of a woman in uniform", "public domain (U.S. Navy)"),
]
SCALES = (1.0, 0.5, 0.25)  # crop side as a fraction of the photo's short side
VERSION = 3  # bump when crops or captions change


def crops(image: Image.Image, scales=SCALES, size: int = SIZE) -> list[tuple[np.ndarray, str]]:
    """Square crops of side s * short side for each scale s, on a grid (details overlap by half), resized to
    `size`: (size, size, 3) uint8 each, with 'whole' / 'detail' / 'close-up' naming the scale."""
    out = [(fit_square(image, size), "whole")] if 1.0 in scales else []  # the course's centre crop
    short = min(image.size)
    for scale, word in zip(scales, ("whole", "detail", "close-up")):
        if scale == 1.0:
            continue
        side = max(1, round(short * scale))
        step = side // 2 if scale >= 0.5 else side  # half-overlapping details, tiled close-ups
        for top in range(0, image.height - side + 1, step):
            for left in range(0, image.width - side + 1, step):
                out.append((fit_square(image.crop((left, top, left + side, top + side)), size), word))
    return out


def source_image(package: str, folder: str, file: str) -> Image.Image | None:
    """The file from inside an installed package, as RGB; None if the package is not installed."""
    try:
        path = importlib.resources.files(package) / folder / file
    except ModuleNotFoundError:
        return None
    with importlib.resources.as_file(path) as local:
        return Image.open(local).convert("RGB") if Path(local).exists() else None


def photo_set(scales=SCALES, size: int = SIZE) -> tuple[np.ndarray, list[str]]:
    """Crops of every available source photo: images (N, size, size, 3) uint8, each captioned by its source
    photo ('photo of a cat'). The caption says the medium without a leading article, so that the prompt
    encoder keeps it (ideal.content strips 'a photo of'): 'a high quality photo' then weights the photos about
    as much as the emoji 'camera', instead of a few camera emoji alone."""
    images, captions = [], []
    for package, folder, file, about, _ in SOURCES:
        image = source_image(package, folder, file)
        if image is None:
            continue
        for crop, _ in crops(image, scales, size):
            images.append(crop)
            captions.append(about)
    if not images:
        raise ModuleNotFoundError("no sample photos found: install scikit-image, scikit-learn or matplotlib")
    return np.stack(images), captions
