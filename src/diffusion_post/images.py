"""Image files the sampling jobs read and write: input images, raw results (safetensors) with their parameters."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from .files import atomic_path
from .image_files import center_square, read_rgb

METADATA_KEY = "parameters"


def load_image(path: Path | str, size: int) -> Tensor:
    """The course's `process`: RGB (image_files.read_rgb: any bit depth, transparency on white), resize the short
    side to `size`, center crop; (1, 3, size, size) in [-1, 1]."""
    return to_tensor(center_square(read_rgb(path), size, Image.Resampling.BICUBIC))


def to_tensor(image: Image.Image) -> Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def save_result(tensors: dict[str, Tensor], path: Path | str, parameters: dict) -> None:
    """Raw sampling output (float32 images, integer timesteps) with its parameters, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={METADATA_KEY: json.dumps(parameters, sort_keys=True)})


def load_result(path: Path | str) -> tuple[dict[str, Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        parameters = json.loads(f.metadata()[METADATA_KEY])
    return load_file(str(path)), parameters
