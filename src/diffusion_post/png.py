"""PNG figures: tiles of images in [-1, 1], written with the JSON of the parameters that made them."""

import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from torch import Tensor

from .files import atomic_path
from .images import METADATA_KEY


def to_uint8(x: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, displayed as x / 2 + 0.5 clamped."""
    return (x.detach().float().cpu().div(2).add(0.5).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())


def tile(images: Tensor, columns: int | None = None, gap: int = 0) -> Image.Image:
    """(N, 3, H, W) -> one RGB image with `columns` per row (default: all in one row), `gap` white pixels between."""
    n, _, h, w = images.shape
    columns = min(columns or n, n)
    rows = -(-n // columns)
    canvas = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), "white")
    for k, x in enumerate(images):
        canvas.paste(Image.fromarray(to_uint8(x)), ((k % columns) * (w + gap), (k // columns) * (h + gap)))
    return canvas


def save_png(image: Image.Image, path: Path | str, parameters: dict) -> None:
    """Write a PNG whose text chunk `parameters` holds the JSON of what made it."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(parameters, sort_keys=True))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def read_parameters(path: Path | str) -> dict:
    """The parameters a figure PNG carries; one-line ValueError for a folder, a non-image, a truncated file."""
    from .image_files import UNREADABLE

    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder: give a figure PNG, e.g. figures/forward.png")
    try:
        with Image.open(path) as image:
            image.load()  # reads every chunk: a truncated file fails here
            text = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    except FileNotFoundError:
        raise
    except UNREADABLE as error:
        raise ValueError(f"{path} is not a readable PNG ({str(error).splitlines()[0] if str(error) else type(error).__name__}): "
                         f"give a figure made by this project") from None
    if text is None:
        raise ValueError(f"{path} carries no '{METADATA_KEY}' metadata: it was not made by this project")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its '{METADATA_KEY}' metadata is not JSON ({error}): it was not made by this project") from None

