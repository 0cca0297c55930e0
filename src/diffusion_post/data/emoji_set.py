"""The embedded image set: Noto colour emoji rendered with Pillow, captioned with their Unicode names.

Prepared once into one uint8 array file under the cache folder; user images (a folder with captions) join it.
"""

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..image_files import center_square, on_background, read_rgb

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # Debian/Ubuntu package fonts-noto-color-emoji
FONT_SIZE = 109  # the only size of the font's bitmap strikes; a glyph is 136 x 128 px
CANVAS = 160  # glyphs are centred on a white 160 px square (a margin like a photographed object), then resized
SIZE = 128  # stored resolution; stage I uses 64 px, stage II upsamples to 256 px on the fly
VERSION = 1  # bump when the rendering changes, so cached files are rebuilt
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


class FontMissing(RuntimeError):
    pass


def emoji_characters() -> list[str]:
    """Fully qualified emoji of one code point (or one code point plus the emoji variation selector U+FE0F)."""
    from emoji import EMOJI_DATA

    return [ch for ch, data in EMOJI_DATA.items()
            if data["status"] == 2 and (len(ch) == 1 or (len(ch) == 2 and ch[1] == "\ufe0f"))]


def caption(ch: str) -> str:
    """The CLDR short name as the `emoji` package spells it: ':cat_face:' -> 'cat face'."""
    from emoji import EMOJI_DATA

    return EMOJI_DATA[ch]["en"].strip(":").replace("_", " ").replace("\u2019", "'")


def render(ch: str, font: ImageFont.FreeTypeFont) -> np.ndarray | None:
    """(SIZE, SIZE, 3) uint8, or None where the font has no glyph for `ch` (emoji newer than the font)."""
    glyph = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((0, 0), ch, font=font, embedded_color=True)
    if glyph.getextrema()[3][1] == 0:
        return None
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    canvas.paste(glyph, ((CANVAS - 136) // 2, (CANVAS - 128) // 2))
    return np.asarray(on_background(canvas).resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def render_emoji_set(font_path: Path | str = FONT) -> tuple[np.ndarray, list[str]]:
    """All renderable emoji: images (N, SIZE, SIZE, 3) uint8 and their captions."""
    if not Path(font_path).exists():
        raise FontMissing(f"emoji font {font_path} not found: run `apt-get install fonts-noto-color-emoji` "
                          f"(or give the ideal backend your own captioned images)")
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    images, captions = [], []
    for ch in emoji_characters():
        image = render(ch, font)
        if image is not None:
            images.append(image)
            captions.append(caption(ch))
    return np.stack(images), captions


def load_emoji_set(cache_dir: Path | str = ".cache", font_path: Path | str = FONT) -> tuple[np.ndarray, list[str]]:
    """The rendered set from `cache_dir`/ideal/, rendered and written there on first use (~2 s)."""
    path = Path(cache_dir) / "ideal" / f"noto-emoji-{SIZE}px-v{VERSION}.npz"
    if not path.exists():
        images, captions = render_emoji_set(font_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # then renamed: concurrent jobs never see half a file
        np.savez(tmp, images=images, captions=np.array(captions))
        tmp.replace(path)
    with np.load(path) as data:
        return data["images"], [str(c) for c in data["captions"]]


def fit_square(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """A set image: RGB, the course's centre square (Lanczos, for photos many times `size`). (size, size, 3) uint8."""
    return np.asarray(center_square(on_background(image), size, Image.Resampling.LANCZOS))


def load_folder(folder: Path | str, size: int = SIZE) -> tuple[np.ndarray, list[str]]:
    """User images: every image file in `folder`, captioned by captions.csv (rows `file,caption`) where it
    lists the file, else by the file name ('old_man-2.png' -> 'old man 2')."""
    folder = Path(folder)
    table = folder / "captions.csv"
    captions = {}
    if table.exists():
        with table.open(newline="") as f:
            captions = {row[0].strip(): row[1].strip() for row in csv.reader(f) if len(row) >= 2}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    images = [fit_square(read_rgb(p), size) for p in files]
    names = [captions.get(p.name, p.stem.replace("_", " ").replace("-", " ")) for p in files]
    return np.stack(images), names
