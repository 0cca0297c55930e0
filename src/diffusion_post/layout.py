"""Cheap steps after sampling: figures (tiled PNGs), anagram animations, the denoising-metrics plot."""

import io
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch import Tensor

from . import provenance
from .files import atomic_path
from .images import load_result
from .png import save_png, tile, to_uint8

GAP = 2  # white pixels between tiles


def figure(result: Path | str, output: Path | str, key: str = "images", frames: Sequence[str] = ()) -> None:
    """Tile one tensor of a result, left to right, into a PNG carrying the result's parameters; with `frames`
    (config.figure_frames), also write each frame of the interactive figure to its own PNG."""
    tensors, parameters = load_result(result)
    save_png(tile(tensors[key], gap=GAP), output, {**parameters, "panel": key})
    if frames:
        write_frames(tensors[key], parameters, frames)


def frame_images(images: Tensor, parameters: dict) -> list[Tensor]:
    """The frames a reader steps through, in tile order: one per tile, or for an anagram one per view, each
    holding every sample seen in that view (the tiles are sample-major: s0v0, s0v1, s1v0, ...)."""
    if parameters["technique"] == "anagram" or parameters.get("source_technique") == "anagram":
        views = len(parameters["views"])
        return [images[v::views] for v in range(views)]
    return [x[None] for x in images]


def write_frames(images: Tensor, parameters: dict, outputs: Sequence[str]) -> None:
    """Write each frame to its file of `outputs` (as many as frame_images gives, in order)."""
    frames = frame_images(images, parameters)
    if len(frames) != len(outputs):
        raise ValueError(f"figure {parameters.get('figure')}: {len(frames)} frames in the result but {len(outputs)} "
                         f"frame files asked for; config.frame_values and layout.frame_images disagree")
    for k, (frame, output) in enumerate(zip(frames, outputs)):
        save_png(tile(frame, gap=GAP), output, {**parameters, "panel": "images", "frame": k})


def _view_frame(image: Image.Image, view: str, s: float) -> Image.Image:
    """The image part way (s in [0, 1]) from itself to its view, as a reader would turn a printed card."""
    if view == "flip":  # turn about the horizontal axis: height scales by cos(pi s), upside down past s = 1/2
        c = math.cos(math.pi * s)
        h = max(1, round(image.height * abs(c)))
        squashed = image.resize((image.width, h), Image.Resampling.BICUBIC)
        if c < 0:
            squashed = squashed.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        frame = Image.new("RGB", image.size, "white")
        frame.paste(squashed, (0, (image.height - h) // 2))
        return frame
    if view == "negate":
        return Image.blend(image, Image.fromarray(255 - np.asarray(image)), s)
    angle = {"rotate_cw": -90, "rotate_ccw": 90, "rotate_180": 180}[view]
    return image.rotate(angle * s, resample=Image.Resampling.BICUBIC, fillcolor="white")


def animation(result: Path | str, output: Path | str, views: list[str], frames: int = 24, hold: int = 12,
              scale: int = 1) -> None:
    """A looping GIF that turns the anagram into each of its other views and back."""
    tensors, _ = load_result(result)
    image = Image.fromarray(to_uint8(tensors["samples"][0]))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    sequence = [image] * hold
    for view in [v for v in views if v != "identity"]:
        turn = [_view_frame(image, view, k / frames) for k in range(1, frames + 1)]
        sequence += turn + [turn[-1]] * hold + turn[::-1] + [image] * hold
    # One palette for every frame: the image's 255 median-cut colours and white (turned frames' background);
    # undithered. ~20x faster than Pillow's palette per frame, and no dither pattern flickering between frames.
    palette = image.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    palette.putpalette(palette.getpalette() + [255, 255, 255])
    sequence = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in sequence]
    with atomic_path(output) as tmp:
        sequence[0].save(tmp, format="GIF", save_all=True, append_images=sequence[1:], duration=50, loop=0)


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB of float images, 10 log10(range^2 / MSE): skimage's peak_signal_noise_ratio to
    the bit (the squares in the images' dtype, their mean in float64), without the 0.4 s of scipy.stats it imports,
    which a sampling job running beside this one would wait for (the GIL)."""
    return float(10 * np.log10(data_range**2 / np.mean(np.square(reference - estimate), dtype=np.float64)))


def metrics(original: Path | str, methods: dict[str, Path | str], output_json: Path | str, output_plot: Path | str) -> dict:
    """PSNR and SSIM (data range 2 for images in [-1, 1]) of each method's estimate against the original,
    at each noise level of the forward figure; a JSON table and a plot (its record: where config.yaml asks for it,
    the figures it compares, the code version and the environment), and the seconds it took beside the table."""
    start = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.metrics import structural_similarity

    forward, parameters = load_result(original)
    x0 = forward["original"][0].permute(1, 2, 0).numpy()
    levels = forward["timesteps"].tolist()
    table = {"timesteps": levels, "methods": {}}
    for method, path in methods.items():
        estimates = load_result(path)[0]["images"]
        rows = [estimate.clamp(-1, 1).permute(1, 2, 0).numpy() for estimate in estimates]
        table["methods"][method] = {
            "psnr": [psnr(x0, x, data_range=2) for x in rows],
            "ssim": [float(structural_similarity(x0, x, data_range=2, channel_axis=2)) for x in rows],
        }
    with atomic_path(output_json) as tmp:
        tmp.write_text(json.dumps(table, indent=2))

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    for method, values in table["methods"].items():
        for ax, key in zip(axes, ("psnr", "ssim")):
            ax.plot(levels, values[key], marker="o", label=method)
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xlabel("noise level t")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    with Image.open(buffer) as plot:
        save_png(plot.convert("RGB"), output_plot, {"figure": "denoising_metrics", "config": "post/metrics",
                                                    "source": parameters.get("figure"),
                                                    "methods": {m: Path(f).stem for m, f in methods.items()},
                                                    **provenance.record()})
    provenance.write_seconds(provenance.seconds_path(output_json), time.perf_counter() - start)
    return table
