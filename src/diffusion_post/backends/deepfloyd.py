"""DeepFloyd IF through diffusers: stage I / stage II UNets, their schedulers and the T5 prompt encoder,
loaded from a hub id or a local folder in the hub layout (the tiny test models use this same code)."""

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..config import looks_local
from ..denoiser import Cascade, StageTwo
from .prompt_cache import MAX_TOKENS, Encoder, PromptCache


class ModelUnavailable(RuntimeError):
    pass


def _load(loader, model_id: str, **kwargs):
    """from_pretrained with one clear message when weights are missing, gated or offline."""
    if looks_local(model_id) and not Path(model_id).is_dir():
        raise ModelUnavailable(f"local model folder {model_id!r} not found: fix the path in backend/ of config.yaml "
                               f"(a folder in the hub layout, with {kwargs.get('subfolder', 'unet')}/ inside)")
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        if Path(model_id).is_dir():
            raise ModelUnavailable(
                f"cannot load {kwargs.get('subfolder', '')!s} from the local folder {model_id!r}: it needs the hub "
                f"layout with {kwargs.get('subfolder', '')}/ and its weights inside "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})") from None
        raise ModelUnavailable(
            f"cannot load {kwargs.get('subfolder', '')!s} of {model_id!r}: accept the DeepFloyd licence on the "
            f"Hugging Face hub and run `hf auth login`, or set the model to a local folder with the weights "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from None


class IFDenoiser:
    """One IF UNet as a Denoiser: (B, C_in, H, W) -> (B, 6, H, W), noise then learned-range values."""

    def __init__(self, unet, alphas_cumprod: Tensor, prompts: PromptCache, description: dict):
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self.sample_size = unet.config.sample_size
        self.prompts = prompts
        self.description = description

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def embed(self, prompts: Sequence[str]) -> Tensor:
        return self.prompts(prompts).to(self.device, self.unet.dtype)

    def __call__(self, x_t: Tensor, t: int, embeds: Tensor, noise_level: int | None = None) -> Tensor:
        class_labels = None if noise_level is None else torch.full((x_t.shape[0],), noise_level, device=x_t.device)
        out = self.unet(x_t.to(self.unet.dtype), t, encoder_hidden_states=embeds.to(self.unet.dtype),
                        class_labels=class_labels, return_dict=False)[0]
        return out.to(x_t.dtype)


def t5_encoder(model_id: str, device: torch.device, dtype: torch.dtype):
    """Load the tokenizer and T5 encoder of `model_id`; returns prompts -> (B, 77, D) like IFPipeline.encode_prompt."""
    from transformers import T5EncoderModel, T5TokenizerFast

    tokenizer = _load(T5TokenizerFast, model_id, subfolder="tokenizer")
    text_encoder = _load(T5EncoderModel, model_id, subfolder="text_encoder", dtype=dtype).to(device)

    @torch.no_grad()
    def encode(prompts: Sequence[str]) -> Tensor:
        tokens = tokenizer([p.lower().strip() for p in prompts], padding="max_length", max_length=MAX_TOKENS,
                           truncation=True, add_special_tokens=True, return_tensors="pt").to(device)
        return text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]

    return encode


def load_cascade(stage_1: str, stage_2: str | None, text_encoder: str | None = None, *, device: str | None = None,
                 cache_dir: Path | str = ".cache/prompt_embeds", backend: str = "deepfloyd",
                 encoder: tuple[str, Callable[[], Encoder]] | None = None) -> Cascade:
    """Stage I (and II) UNets and schedulers; fp16 on CUDA, fp32 on the CPU. T5 comes from `text_encoder`
    (default: the stage-I repository) and only when a prompt is not in the embedding cache; `encoder` = (name,
    factory) replaces T5 by another prompt encoder (the trained backend's sentence encoder)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    variant = "fp16" if dtype == torch.float16 else None
    if encoder is None:
        text_encoder = text_encoder or stage_1
        encoder = (text_encoder, lambda: t5_encoder(text_encoder, device, dtype))
    text_encoder = encoder[0]
    prompts = PromptCache(cache_dir, *encoder)

    def denoiser(model_id: str, stage: str) -> IFDenoiser:
        try:
            unet = _load(UNet2DConditionModel, model_id, subfolder="unet", variant=variant, dtype=dtype)
        except ModelUnavailable:
            if variant is None:
                raise
            # no fp16 files (a local fp32 folder such as the tiny models): load the default weights as fp16
            unet = _load(UNet2DConditionModel, model_id, subfolder="unet", dtype=dtype)
        unet = unet.to(device).eval()
        scheduler = _load(DDPMScheduler, model_id, subfolder="scheduler")
        return IFDenoiser(unet, scheduler.alphas_cumprod, prompts, {"backend": backend, stage: model_id})

    first = denoiser(stage_1, "stage_1")
    second = None
    if stage_2:
        noising = _load(DDPMScheduler, stage_2, subfolder="image_noising_scheduler")
        second = StageTwo(denoiser(stage_2, "stage_2"), noising.alphas_cumprod.float())
    description = {"backend": backend, "stage_1": stage_1, "stage_2": stage_2, "text_encoder": text_encoder,
                   "dtype": str(dtype).removeprefix("torch.")}
    return Cascade(first, second, description)
