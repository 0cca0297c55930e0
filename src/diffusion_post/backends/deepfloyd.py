"""DeepFloyd IF through diffusers: stage I / stage II UNets, their schedulers and the T5 prompt encoder,
loaded from a hub id or a local folder in the hub layout (the tiny test models use this same code).

T5 and the UNets never share the GPU: the workflow encodes every prompt first (PromptCache.encode), then
releases T5 before the first UNet loads; stage II loads only when a stage-II figure asks for it."""

import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..config import bitsandbytes_missing, looks_local
from ..denoiser import Cascade, StageTwo
from .catalog import text_encoder_key
from .prompt_cache import MAX_TOKENS, Encoder, PromptCache

T5_MODES = ("auto", "cpu", "8bit")


class ModelUnavailable(RuntimeError):
    pass


def announce(what: str, model_id: str, device: torch.device | str, dtype: str) -> None:
    """The one log line of each model load: what, from where, on which device, in which precision."""
    print(f"diffusion-post: loading {what} {model_id} on {device} ({dtype})", file=sys.stderr, flush=True)


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


def _load_weights(loader, model_id: str, subfolder: str, dtype: torch.dtype, **kwargs):
    """A model in `dtype` from the weight files that match it: the fp16 files (half the download) for half precision,
    the default files for float32; the other kind where a folder has only that (the tiny models have no fp16 files,
    a folder of fp16 files serves the CPU too)."""
    variants = ["fp16", None] if dtype in (torch.float16, torch.bfloat16) else [None, "fp16"]
    try:
        return _load(loader, model_id, subfolder=subfolder, variant=variants[0], dtype=dtype, **kwargs)
    except ModelUnavailable:
        return _load(loader, model_id, subfolder=subfolder, variant=variants[1], dtype=dtype, **kwargs)


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as error:  # a broken driver or library: its own words
        return str(error).splitlines()[0][:200]
    return "no CUDA device is visible"


def resolve_device(device: str | None, backend: str = "deepfloyd") -> torch.device:
    """The device a backend runs on: `device` when given, else CUDA. DeepFloyd IF without a usable GPU stops with
    one line (fp32 on the CPU takes hours), unless `device: cpu` asks for the CPU on purpose."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if backend == "deepfloyd":
        raise ModelUnavailable(f"the deepfloyd backend needs a CUDA GPU and torch finds none ({_no_cuda_reason()}): "
                               f"fix the CUDA install, or set backend/device: cpu to run DeepFloyd IF on the CPU on "
                               f"purpose (float32, hours per figure)")
    return torch.device("cpu")


def unet_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def t5_encoder(model_id: str, device: torch.device, mode: str = "auto") -> Encoder:
    """Load the tokenizer and T5 encoder of `model_id`; returns prompts -> (B, 77, D) like IFPipeline.encode_prompt.

    mode "auto": on `device`, float16 on CUDA (transformers keeps T5's `wo` layers in float32: ~11.5 GB for
    T5-XXL), float32 on the CPU; "cpu": on the CPU in bfloat16, T5 v1.1's training precision (~9.5 GB of RAM);
    "8bit": int8 weights on the GPU through bitsandbytes (the `wo` layers stay float32: ~8 GB)."""
    from transformers import T5EncoderModel, T5TokenizerFast

    if mode not in T5_MODES:
        raise ValueError(f"backend/t5: {mode!r} is not one of {', '.join(T5_MODES)}")
    options = {}
    if mode == "cpu":
        device, dtype, precision = torch.device("cpu"), torch.bfloat16, "bfloat16"
    elif mode == "8bit":
        missing = bitsandbytes_missing()
        if missing:
            raise ModelUnavailable(missing)
        if device.type != "cuda":
            raise ModelUnavailable(f"backend/t5: 8bit needs a CUDA GPU (the backend runs on {device}): use t5: auto")
        from transformers import BitsAndBytesConfig

        dtype, precision = torch.float16, "int8 through bitsandbytes, wo layers float32"
        options = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": device}}
    else:
        dtype = unet_dtype(device)
        precision = "float16, wo layers float32" if dtype == torch.float16 else "float32"
    announce("text encoder", model_id, device, precision)
    tokenizer = _load(T5TokenizerFast, model_id, subfolder="tokenizer")
    text_encoder = _load_weights(T5EncoderModel, model_id, "text_encoder", dtype, **options)
    if mode != "8bit":  # a quantized model is placed by its device_map and cannot be moved
        text_encoder = text_encoder.to(device)
    text_encoder.eval()

    @torch.no_grad()
    def encode(prompts: Sequence[str]) -> Tensor:
        tokens = tokenizer([p.lower().strip() for p in prompts], padding="max_length", max_length=MAX_TOKENS,
                           truncation=True, add_special_tokens=True, return_tensors="pt").to(text_encoder.device)
        return text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]

    return encode


def t5_prompt_cache(model_id: str, *, device: str | None = None, cache_dir: Path | str = ".cache/prompt_embeds",
                    t5: str = "auto", backend: str = "deepfloyd") -> PromptCache:
    """The prompt cache of the T5 in `model_id` (a stage-I repository or folder); T5 loads on the first prompt not
    cached yet (a warm cache needs neither T5 nor a GPU)."""
    return PromptCache(cache_dir, text_encoder_key(model_id),
                       lambda: t5_encoder(model_id, resolve_device(device, backend), t5), release_after_call=True)


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


def load_cascade(stage_1: str, stage_2: str | None, text_encoder: str | None = None, *, device: str | None = None,
                 cache_dir: Path | str = ".cache/prompt_embeds", backend: str = "deepfloyd",
                 prompts: PromptCache | None = None) -> Cascade:
    """Stage I now and stage II on first use (its schedulers are checked now), fp16 on CUDA, fp32 on the CPU.
    Prompt embeddings come from `prompts` (default: the cache of the T5 in `text_encoder`, else in the stage-I
    repository), which never keeps an encoder that a sampling call loaded."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    device = resolve_device(device, backend)
    dtype = unet_dtype(device)
    text_encoder = text_encoder or stage_1
    if prompts is None:
        prompts = t5_prompt_cache(text_encoder, device=str(device), cache_dir=cache_dir, backend=backend)

    def denoiser(model_id: str, stage: str) -> IFDenoiser:
        scheduler = _load(DDPMScheduler, model_id, subfolder="scheduler")
        announce(f"{stage} UNet", model_id, device, str(dtype).removeprefix("torch."))
        unet = _load_weights(UNet2DConditionModel, model_id, "unet", dtype).to(device).eval()
        return IFDenoiser(unet, scheduler.alphas_cumprod, prompts, {"backend": backend, stage: model_id})

    first = denoiser(stage_1, "stage_1")
    second = None
    if stage_2:
        noising = _load(DDPMScheduler, stage_2, subfolder="image_noising_scheduler").alphas_cumprod.float()
        _load(DDPMScheduler, stage_2, subfolder="scheduler")  # a missing component fails now, not mid-build
        second = lambda: StageTwo(denoiser(stage_2, "stage_2"), noising)  # noqa: E731 (loaded on first use)

    description = {"backend": backend, "stage_1": stage_1, "stage_2": stage_2, "text_encoder": prompts.encoder_name,
                   "dtype": str(dtype).removeprefix("torch.")}
    return Cascade(first, second, description)
