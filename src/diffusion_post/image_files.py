"""Reading image files: ONE loader for the input images and the ideal backend's image sets (torch-free, so the
config check can open every input without loading torch).

Any mode Pillow reads becomes 8-bit RGB: 16-bit images scaled to 8 bits (not clipped to white), palette and
grayscale images expanded, transparency composited onto white, the EXIF orientation applied.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BACKGROUND = (255, 255, 255)  # transparent pixels become white, as image viewers and emoji usually show them
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFileError(ValueError):
    pass


def on_background(image: Image.Image) -> Image.Image:
    """RGB, with any transparency (alpha channel, palette or tRNS transparency) composited onto BACKGROUND."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8_bit(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    image = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", image.size, BACKGROUND + (255,)), image).convert("RGB")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer / float) grayscale image as 8-bit 'L': 65535 -> 255 (Pillow's own convert
    clips at 255, which turns every 16-bit image white)."""
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
        array = array / 257
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")


def read_rgb(path: Path | str) -> Image.Image:
    """The image file at `path` as 8-bit RGB on white, fully decoded (a truncated file fails here, not later).
    Raises ImageFileError with one line naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return on_background(image)
    except UNREADABLE as error:
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImageFileError(f"cannot read image {str(path)!r} ({reason}): give a PNG, JPEG or WebP file") from None


def center_square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """The course's `process` (the short side resized to `size`, then the centre `size` x `size` crop), as one
    resize of the centre square (a fractional box), so that every `size` shows exactly the same region: rounding
    the crop at each size would shift the 64-px input against the set's 128-px copy of it by up to half a pixel."""
    short = min(image.size)
    left, top = (image.width - short) / 2, (image.height - short) / 2
    return image.resize((size, size), resample, box=(left, top, left + short, top + short))
