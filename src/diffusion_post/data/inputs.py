"""Default input images: real photos bundled with scikit-image (public domain or CC0) and two drawings made here.

config.yaml refers to them by name; a user replaces one by giving a file instead.
"""

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_INPUTS = {
    "test_photo": "a Falcon 9 rocket on its launch pad at dusk, a tall tower like the post's Campanile "
                  "(SpaceX, public domain; scikit-image `rocket`)",
    "own_photo_1": "Chelsea the cat (Stefan van der Walt, CC0; scikit-image `chelsea`)",
    "own_photo_2": "an espresso cup on a saucer (Rachel Michetti, CC0; scikit-image `coffee`)",
    "web_image": "a portrait of the astronaut Eileen Collins (NASA, public domain; scikit-image `astronaut`)",
    "drawing_house": "a hand-drawn-style house under the sun (made here with Pillow)",
    "drawing_flower": "a hand-drawn-style flower (made here with Pillow)",
    "drawing_happy_face": "a hand-drawn happy face, like the one among the post's own images (made here with Pillow)",
}
PHOTOS = {"test_photo": "rocket.jpg", "own_photo_1": "chelsea.png", "own_photo_2": "coffee.png", "web_image": "astronaut.png"}
DRAWING_SIZE = 256


def photo(file: str) -> Image.Image:
    """One of the photos inside the scikit-image wheel, read without importing scikit-image's modules."""
    try:
        path = importlib.resources.files("skimage") / "data" / file
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the default photos come with scikit-image: `pip install scikit-image`, "
                                  "or give your own image files in config.yaml") from None
    with importlib.resources.as_file(path) as local:
        return Image.open(local).convert("RGB")


def _stroke(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], rng: np.random.Generator,
            fill: str = "black", width: int = 5, closed: bool = False) -> None:
    """A polyline with a slight hand tremor: every segment is split into ~6-px pieces jittered by ~1 px."""
    points = points + points[:1] if closed else points
    path = []
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = max(2, int(np.hypot(x1 - x0, y1 - y0) / 6))
        s = np.linspace(0, 1, n, endpoint=False)
        path += list(zip(x0 + s * (x1 - x0), y0 + s * (y1 - y0)))
    path.append(points[-1])
    wobble = np.cumsum(rng.normal(0, 0.6, (len(path), 2)), axis=0).clip(-2.5, 2.5)
    draw.line([(x + dx, y + dy) for (x, y), (dx, dy) in zip(path, wobble)], fill=fill, width=width, joint="curve")


def _circle(cx: float, cy: float, r: float, n: int = 24) -> list[tuple[float, float]]:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip(cx + r * np.cos(a), cy + r * np.sin(a)))


def drawing_house(seed: int = 0) -> Image.Image:
    """A crayon-style house: red roof, blue window, brown door, yellow sun, green ground, on white."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (DRAWING_SIZE, DRAWING_SIZE), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon([(60, 120), (196, 120), (196, 220), (60, 220)], fill=(250, 230, 180))
    draw.polygon([(45, 122), (128, 50), (211, 122)], fill=(220, 60, 50))
    draw.rectangle([80, 140, 115, 172], fill=(120, 180, 240))
    draw.rectangle([140, 160, 172, 220], fill=(150, 90, 40))
    draw.ellipse([190, 14, 240, 64], fill=(255, 215, 0))
    for outline, closed in [([(60, 120), (196, 120), (196, 220), (60, 220)], True), ([(45, 122), (128, 50), (211, 122)], True),
                            ([(80, 140), (115, 140), (115, 172), (80, 172)], True), ([(97, 140), (97, 172)], False),
                            ([(140, 220), (140, 160), (172, 160), (172, 220)], False), (_circle(215, 39, 25), True)]:
        _stroke(draw, outline, rng, closed=closed)
    for k in range(8):  # sun rays
        a = k * np.pi / 4
        _stroke(draw, [(215 + 31 * np.cos(a), 39 + 31 * np.sin(a)), (215 + 44 * np.cos(a), 39 + 44 * np.sin(a))], rng, width=4)
    _stroke(draw, [(8, 222), (248, 220)], rng, fill=(40, 160, 60), width=8)
    return image


def drawing_flower(seed: int = 1) -> Image.Image:
    """A crayon-style flower: pink petals round a yellow centre on a green stem with two leaves, on white."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (DRAWING_SIZE, DRAWING_SIZE), "white")
    draw = ImageDraw.Draw(image)
    cx, cy = 128, 92
    _stroke(draw, [(128, 120), (124, 170), (130, 240)], rng, fill=(40, 150, 50), width=8)
    for leaf in ([(126, 190), (92, 168), (70, 178), (126, 190)], [(128, 205), (164, 182), (188, 192), (128, 205)]):
        draw.polygon(leaf, fill=(90, 190, 90))
        _stroke(draw, leaf, rng, fill=(30, 110, 40), width=4)
    for k in range(6):
        a = k * np.pi / 3
        px, py = cx + 38 * np.cos(a), cy + 38 * np.sin(a)
        draw.ellipse([px - 24, py - 24, px + 24, py + 24], fill=(245, 120, 170))
        _stroke(draw, _circle(px, py, 24), rng, closed=True, width=4)
    draw.ellipse([cx - 22, cy - 22, cx + 22, cy + 22], fill=(255, 205, 40))
    _stroke(draw, _circle(cx, cy, 22), rng, closed=True, width=4)
    return image


def drawing_happy_face(seed: int = 2) -> Image.Image:
    """A crayon-style happy face: a yellow face with a black outline, two eyes and a smile, on white."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (DRAWING_SIZE, DRAWING_SIZE), "white")
    draw = ImageDraw.Draw(image)
    cx, cy, r = 128, 128, 96
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 220, 60))
    _stroke(draw, _circle(cx, cy, r, n=40), rng, closed=True, width=7)
    for ex in (cx - 36, cx + 36):  # eyes: filled ovals
        draw.ellipse([ex - 11, cy - 52, ex + 11, cy - 18], fill="black")
    a = np.linspace(np.pi * 0.15, np.pi * 0.85, 14)  # the smile, an arc below the centre
    _stroke(draw, list(zip(cx + 58 * np.cos(a), cy + 8 + 50 * np.sin(a))), rng, width=8)
    return image


def default_input(name: str) -> Image.Image:
    """The default input image called `name` (see DEFAULT_INPUTS)."""
    if name not in DEFAULT_INPUTS:
        raise ValueError(f"unknown default input {name!r}: use one of {', '.join(DEFAULT_INPUTS)} or give an image file")
    if name in PHOTOS:
        return photo(PHOTOS[name])
    return {"drawing_house": drawing_house, "drawing_flower": drawing_flower, "drawing_happy_face": drawing_happy_face}[name]()


def write_default_input(name: str, path: Path | str) -> Path:
    """Write the default input `name` to `path` (format from the suffix, e.g. .png) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    default_input(name).save(path)
    return path


def input_caption(value: str) -> str:
    """The caption an input image has in the ideal backend's set: a shipped image's description without its
    credits, or a file's name in words ('photos/old_tower-2.jpg' -> 'old tower 2')."""
    import re

    if value.startswith("builtin:") and value[len("builtin:"):] in DEFAULT_INPUTS:
        return re.sub(r"\s*\(.*\)$", "", DEFAULT_INPUTS[value[len("builtin:"):]])
    return re.sub(r"[_\-\s]+", " ", Path(value).stem).strip() or Path(value).name
