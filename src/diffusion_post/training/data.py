"""The trained backend's data set: captioned 128-px images, their caption embeddings and a manifest, in ONE file.

Sources (all offline, through the package managers the project already uses; licences in the manifest and README):
- Noto Color Emoji (Debian fonts-noto-color-emoji, SIL OFL 1.1): every fully qualified emoji the font draws, without
  skin-tone variants (same picture, same name), rendered as the ideal backend renders them (data/emoji_set.py).
  Caption: the emojibase label ('grinning cat', 'flag: France'); a second caption adds its keywords
  ('grinning cat, animal, cat, face, grinning'). Keywords: npm `emojibase-data` (MIT), fetched once with `npm pack`.
- Photo crops: square crops of the public-domain / CC0 photos scikit-image ships and the two CC BY 2.0 photos of
  scikit-learn, captioned by what they show ('a cat', 'a temple').
Stored at 128 px: stage II's target (the Noto glyphs are 136 x 128 px, so 256 px would hold no more detail);
stage I sees the same images area-downsampled to 64 px. Augmentations are drawn at training time (`augment`).
"""

import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFont
from torch import Tensor

from ..data.emoji_set import FONT, FONT_SIZE, FontMissing, fit_square, render
from ..files import atomic_path, sha256, write_json_atomic
from . import DATA_VERSION as VERSION, EMOJIBASE

SIZE = 128
CAPTION_VARIANTS = 2  # the label; the label with keywords
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
NO_FLIP_GROUPS = {8, 9}  # emojibase groups 'symbols' and 'flags': letters, arrows and flags are not mirror-symmetric
NO_FLIP_WORDS = re.compile(r"\b(left|right|arrow|clock|o.clock|letter|writing|newspaper|memo|calendar|book|ledger|"
                           r"notebook|scroll|page|receipt|label|ticket|keycap|button|symbol|sign|hand|point|flag|\d)",
                           re.IGNORECASE)


def is_flag(ch: str) -> bool:
    """Regional-indicator pairs and tag sequences (subdivision flags): never mirrored, with or without keywords."""
    return any(0x1F1E6 <= ord(c) <= 0x1F1FF or 0xE0020 <= ord(c) <= 0xE007F for c in ch)

# (scikit-image loader name or "sklearn:<file>", caption, licence)
PHOTOS = (
    ("astronaut", "an astronaut", "public domain (NASA)"),
    ("coffee", "a cup of coffee", "CC0 (Rachel Michetti)"),
    ("chelsea", "a cat", "CC0 (Stefan van der Walt)"),
    ("rocket", "a rocket", "public domain (SpaceX)"),
    ("hubble_deep_field", "galaxies in deep space", "public domain (NASA)"),
    ("sklearn:china.jpg", "a temple", "CC BY 2.0 (danielbuechele, Flickr)"),
    ("sklearn:flower.jpg", "a flower", "CC BY 2.0 (vultilion, Flickr)"),
)
EMOJI_LICENCE = "SIL Open Font License 1.1 (Noto Color Emoji, Debian fonts-noto-color-emoji)"
KEYWORDS_LICENCE = "MIT (emojibase-data, npm)"


class DataToolMissing(RuntimeError):
    pass


def npm_pack(spec: str, folder: Path) -> Path:
    """The tarball of npm package `spec` (name@version) in `folder`, fetched once with `npm pack`."""
    name, version = spec.rsplit("@", 1)
    tarball = folder / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if tarball.is_file():
        return tarball
    folder.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(folder)],
                             capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise DataToolMissing(f"npm not found: install it (scripts/install_system_deps.sh) to fetch {spec}") from None
    if run.returncode != 0 or not tarball.is_file():
        last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DataToolMissing(f"npm pack {spec} failed: {last}")
    return tarball


def emojibase_entries(tarball: Path | str) -> dict[str, dict]:
    """emoji (without variation selectors) -> {label, tags, group} from emojibase-data's en/data.json."""
    with tarfile.open(tarball) as tar:
        data = json.load(tar.extractfile("package/en/data.json"))
    return {plain(e["emoji"]): {"label": e["label"], "tags": e.get("tags", []), "group": e.get("group")} for e in data}


def plain(ch: str) -> str:
    """Without U+FE0F: emojibase and the `emoji` package disagree on where the variation selector goes."""
    return ch.replace("\ufe0f", "")


def emoji_entries(keywords: dict[str, dict], limit: int | None = None) -> list[tuple[str, str, str, bool]]:
    """(emoji, label, label with keywords, flippable) for every fully qualified emoji without a skin tone, in the
    `emoji` package's order; `limit` keeps an evenly spaced subset (for tests)."""
    from emoji import EMOJI_DATA

    from ..data.emoji_set import caption

    entries = []
    for ch, data in EMOJI_DATA.items():
        if data["status"] != 2 or SKIN_TONES & set(ch):
            continue
        info = keywords.get(plain(ch), {})
        label = info.get("label") or caption(ch)
        tags = [t for t in info.get("tags", []) if t.lower() not in label.lower()][:6]
        with_keywords = ", ".join([label, *tags])
        flippable = not (info.get("group") in NO_FLIP_GROUPS or NO_FLIP_WORDS.search(with_keywords) or is_flag(ch))
        entries.append((ch, label, with_keywords, flippable))
    if limit is not None and limit < len(entries):
        entries = [entries[i] for i in np.linspace(0, len(entries) - 1, limit).round().astype(int)]
    return entries


def photo(source: str) -> Image.Image:
    if source.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(source.removeprefix("sklearn:")))
    import skimage.data

    return Image.fromarray(getattr(skimage.data, source)())


def photo_crops(image: Image.Image, count: int, rng: np.random.Generator, size: int = SIZE) -> list[np.ndarray]:
    """The centre square, then `count - 1` random squares of 60-100 % of the short side (the subject stays in)."""
    crops = [fit_square(image, size)]
    short = min(image.size)
    for _ in range(count - 1):
        side = int(short * rng.uniform(0.6, 1.0))
        left = int(rng.integers(0, image.width - side + 1))
        top = int(rng.integers(0, image.height - side + 1))
        crops.append(fit_square(image.crop((left, top, left + side, top + side)), size))
    return crops[:count]


def build_dataset(output: Path | str, keywords_tarball: Path | str | None, encoder: Callable[[], Callable],
                  emoji_limit: int | None = None, crops_per_photo: int = 16, seed: int = 0,
                  font_path: Path | str = FONT) -> dict:
    """Render, caption and embed the set; write `output` (.npz) and its manifest (`output` with .json) atomically.
    `encoder()` makes the prompt encoder (texts -> (B, 384)); the ideal backend's MiniLM in the data rule."""
    output = Path(output)
    if not Path(font_path).exists():
        raise FontMissing(f"emoji font {font_path} not found: run `apt-get install fonts-noto-color-emoji`")
    keywords = emojibase_entries(keywords_tarball) if keywords_tarball else {}
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    images, texts, flippable, source = [], [], [], []
    for ch, label, with_keywords, flip in emoji_entries(keywords, emoji_limit):
        image = render(ch, font)
        if image is None:  # newer than the font
            continue
        images.append(image), texts.append((label, with_keywords)), flippable.append(flip), source.append(0)
    sources = [{"name": "Noto Color Emoji", "licence": EMOJI_LICENCE, "count": len(images),
                "captions": f"emojibase labels and keywords ({EMOJIBASE}, {KEYWORDS_LICENCE})" if keywords
                else "emoji package names (no keywords)"}]
    rng = np.random.default_rng(seed)
    for name, text, licence in PHOTOS if crops_per_photo else ():
        crops = photo_crops(photo(name), crops_per_photo, rng)
        images += crops
        texts += [(text, f"{text}, a photo")] * len(crops)
        flippable += [True] * len(crops)
        source += [len(sources)] * len(crops)
        sources.append({"name": f"{name} ({'scikit-learn' if ':' in name else 'scikit-image'} sample photo)",
                        "licence": licence, "count": len(crops), "captions": text})

    from ..backends.image_set import ENCODER_NAME

    encode = encoder()
    flat = [t for pair in texts for t in pair]
    embeds = torch.cat([encode(flat[i:i + 512]) for i in range(0, len(flat), 512)])
    embeds = embeds.reshape(len(texts), CAPTION_VARIANTS, -1).half().numpy()
    manifest = {"version": VERSION, "size": SIZE, "count": len(images), "seed": seed, "emoji_limit": emoji_limit,
                "crops_per_photo": crops_per_photo, "caption_encoder": ENCODER_NAME, "keywords": EMOJIBASE if keywords else None,
                "flippable": int(sum(flippable)), "sources": sources}
    with atomic_path(output) as tmp:
        np.savez_compressed(tmp, images=np.stack(images), captions=np.array([t[0] for t in texts]),
                            texts=np.array(texts), embeds=embeds, flippable=np.array(flippable),
                            source=np.array(source), manifest=np.array(json.dumps(manifest)))
        manifest["bytes"] = tmp.stat().st_size
        manifest["sha256"] = sha256(tmp)
    write_json_atomic(output.with_suffix(".json"), manifest)
    return manifest


class TrainingSet:
    """The data file in memory: images (N, 3, 128, 128) uint8, caption embeddings (N, K, 384), flip flags."""

    def __init__(self, path: Path | str, device: torch.device | str = "cpu"):
        with np.load(path) as data:
            self.manifest = json.loads(str(data["manifest"]))
            self.images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous().to(device)
            self.embeds = torch.from_numpy(data["embeds"]).float().to(device)
            self.flippable = torch.from_numpy(data["flippable"]).to(device)
            self.captions = [str(c) for c in data["captions"]]
        beside = Path(path).with_suffix(".json")  # the data rule's manifest, with the file's size and sha256
        if beside.exists():
            self.manifest = json.loads(beside.read_text())

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: Tensor, generator: torch.Generator, caption_dropout: float) -> tuple[Tensor, Tensor]:
        """Augmented images (B, 3, 128, 128) in [-1, 1] and their conditioning (B, 1, 384): one caption variant
        drawn per image, replaced by the zero vector (the empty prompt's embedding) with prob. `caption_dropout`."""
        device = self.images.device
        x = augment(self.images[idx].float() / 127.5 - 1, self.flippable[idx], generator)
        variant = torch.randint(0, self.embeds.shape[1], (len(idx),), generator=generator, device=device)
        cond = self.embeds[idx, variant]
        keep = torch.rand(len(idx), generator=generator, device=device) >= caption_dropout
        return x, (cond * keep[:, None])[:, None, :]


def augment(x: Tensor, flippable: Tensor, generator: torch.Generator, max_shift: float = 0.04,
            max_scale: float = 0.08, jitter: float = 0.05) -> Tensor:
    """Augmentations that keep the caption true: a horizontal flip (p = 1/2, only where `flippable`), a small
    shift and zoom (edges repeated: white around emoji), mild brightness / contrast / saturation jitter (no hue
    change: 'green heart' stays green). x: (B, 3, H, W) in [-1, 1]."""
    B, device = x.shape[0], x.device
    u = lambda *shape: torch.rand(*shape, generator=generator, device=device) * 2 - 1  # U[-1, 1)
    flip = (torch.rand(B, generator=generator, device=device) < 0.5) & flippable
    scale = 1 + max_scale * u(B)
    theta = torch.zeros(B, 2, 3, device=device)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = max_shift * 2 * u(B, 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness, contrast, saturation = (jitter * u(B, 1, 1, 1) for _ in range(3))
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * (1 + 2 * saturation)
    x = x.mean(dim=(1, 2, 3), keepdim=True) + (x - x.mean(dim=(1, 2, 3), keepdim=True)) * (1 + contrast)
    return (x + brightness).clamp(-1, 1)


def downsample(x: Tensor, size: int) -> Tensor:
    """Area (box) downsampling: stage I's 64-px view of a 128-px image."""
    return F.interpolate(x, size=(size, size), mode="area")
