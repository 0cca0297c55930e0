"""Full-size DeepFloyd IF without its weights (no download, no GPU needed): the configs of T5-v1.1-XXL and of the IF
UNets, their parameter counts on the meta device, random-weight copies for measurements on a GPU
(scripts/gpu_memory.py), and the README's GPU-memory estimate:

    python -m diffusion_post.full_size [config.yaml]      # prints the table of the README's "GPU memory"

Published configs: T5-v1.1-XXL (google/t5-v1_1-xxl, the T5 of every IF-I stage) and IF-I-XL (REFERENCE §3).
ASSUMED, the configs of IF-I-L, IF-I-M and IF-II-L were not available offline: IF-I-L and -M are IF-I-XL's
architecture at model_channels 320 and 192, IF-II-L a 5-level 256-px UNet with cross-attention at 32 and 16 px, each
sized to its model card's parameter count (0.9 B, 0.4 B, 1.2 B); the measured counts are printed beside them.
"""

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)
STAGE_1_CHANNELS = {"IF-I-XL": 704, "IF-I-L": 320, "IF-I-M": 192}  # XL published; L and M ASSUMED (see above)
MODEL_CARD_PARAMETERS = {"T5-XXL": 4.76e9, "IF-I-XL": 4.3e9, "IF-I-L": 0.9e9, "IF-I-M": 0.4e9, "IF-II-L": 1.2e9}
# nvidia-smi's total memory of the smallest common card of each class (what the CUDA context and PyTorch share)
CARDS = {"8 GB": 8.0, "12 GB": 12.0, "16 GB (T4: 15.0)": 15.0, "24 GB (A10: 22.5)": 22.5, "40 GB": 40.0}
CUDA_CONTEXT_GIB = 0.5  # CUDA context and kernels, outside torch.cuda.max_memory_allocated
ALLOCATOR_SLACK = 1.10  # PyTorch's caching allocator reserves ~5-15 % more than it hands out


def stage_1_config(arch: str) -> dict:
    """UNet2DConditionModel config of an IF stage I (64 px): IF-I-XL's published one, at the model_channels of `arch`."""
    channels = STAGE_1_CHANNELS[arch]
    return dict(
        sample_size=64, in_channels=3, out_channels=6, layers_per_block=3,
        block_out_channels=[channels, 2 * channels, 3 * channels, 4 * channels],
        down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
        attention_head_dim=64, cross_attention_dim=4 * channels, encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
        addition_embed_type="text", addition_embed_type_num_heads=64, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=32,
    )


def stage_2_config(arch: str = "IF-II-L") -> dict:
    """ASSUMED IF-II-L (64 -> 256 px): the noised upsampled image as 3 more input channels, its noise level as class
    labels (IF-II's class_embed_type "timestep"), cross-attention at 32 and 16 px."""
    if arch != "IF-II-L":
        raise ValueError(f"no stage-II config for {arch!r}: IF-II-L only")
    channels, multipliers, attention = 160, [1, 2, 4, 8, 8], (3, 4)
    levels = range(len(multipliers))
    return dict(
        sample_size=256, in_channels=6, out_channels=6, layers_per_block=[2, 2, 3, 4, 4],
        block_out_channels=[channels * m for m in multipliers],
        down_block_types=["SimpleCrossAttnDownBlock2D" if i in attention else "ResnetDownsampleBlock2D" for i in levels],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D" if i in attention else "ResnetUpsampleBlock2D" for i in reversed(levels)],
        attention_head_dim=64, cross_attention_dim=channels * multipliers[-1], encoder_hid_dim=4096,
        encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=64,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=32,
        class_embed_type="timestep",
    )


def build(arch: str, device: str = "meta"):
    """The model of `arch` (T5-XXL, IF-I-M/L/XL, IF-II-L) with uninitialised weights on `device` (meta: no memory)."""
    import torch

    with torch.device(device):
        if arch == "T5-XXL":
            from transformers import T5Config, T5EncoderModel

            return T5EncoderModel(T5Config(**T5_XXL))
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**(stage_2_config(arch) if arch.startswith("IF-II") else stage_1_config(arch)))


# --- the estimate ------------------------------------------------------------------------------------------------------

@functools.cache
def weight_bytes(arch: str, t5: str = "auto") -> int:
    """Bytes of a model's weights on the GPU: float16, except T5's `wo` layers, which transformers keeps in float32;
    T5 in 8 bit (bitsandbytes): int8 for every other linear layer (plus one float32 scale per row)."""
    import torch

    model = build(arch)
    if arch != "T5-XXL":
        return 2 * sum(p.numel() for p in model.parameters())
    if t5 in ("cpu", "cached"):
        return 0
    total, seen = 0, set()
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:  # the token embedding, shared with the encoder
                continue
            seen.add(id(p))
            if ".wo" in f".{name}":
                total += 4 * p.numel()
            elif t5 == "8bit" and isinstance(module, torch.nn.Linear):
                total += p.numel() + 4 * p.shape[0]
            else:
                total += 2 * p.numel()
    return total


@functools.cache
def activation_bytes(arch: str, batch: int) -> int:
    """Estimated peak of live activations in one no-grad call at batch `batch` (float16), from the shapes of a meta
    forward pass: the skip connections a UNet's down path keeps for its up path, plus three times the largest
    tensor any module returns (its input, its output and one temporary of the op in flight). Attention scores are
    not counted: on CUDA, scaled_dot_product_attention's fused kernels do not store them."""
    import torch

    model = build(arch)
    largest, skips = [0], [0]

    def record(module, args, out):
        tensors = [t for t in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(t)]
        largest[0] = max([largest[0], *(t.numel() for t in tensors)])

    def keep_skips(module, args, out):  # a down block returns (hidden states, the states kept for the up path)
        skips[0] += sum(t.numel() for t in out[1])

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    with torch.no_grad():
        if arch == "T5-XXL":
            model(torch.zeros(batch, 77, dtype=torch.long, device="meta"))
        else:
            hooks += [block.register_forward_hook(keep_skips) for block in model.down_blocks]
            config = model.config
            x = torch.zeros(batch, config.in_channels, config.sample_size, config.sample_size, device="meta")
            labels = torch.zeros(batch, device="meta") if config.class_embed_type else None
            model(x, 500, encoder_hidden_states=torch.zeros(batch, 77, 4096, device="meta"), class_labels=labels)
    for hook in hooks:
        hook.remove()
    return 2 * (skips[0] + 3 * largest[0])


def unet_batches(config: dict) -> dict[int, int]:
    """The largest UNet batch of each stage over the figures of a config: one row per view (anagrams) or component
    (hybrids), twice with classifier-free guidance (the unconditional half)."""
    from .config import figure_table, resolve
    from .spec import COMPONENTS, PROMPTLESS

    batches = {1: 1, 2: 0}
    for name in figure_table(config):
        spec = resolve(config, name)
        technique = spec.get("source_technique", spec["technique"])
        if spec["technique"] in PROMPTLESS:  # no denoiser call
            continue
        rows = (len(spec["views"]) if technique == "anagram" else len(COMPONENTS[spec["factorization"]])
                if technique == "hybrid" else 1) * (2 if spec.get("guidance_scale") is not None else 1)
        stage = 2 if spec["technique"] == "upsample" else 1
        batches[stage] = max(batches[stage], rows)
    return batches


@dataclass(frozen=True)
class Setup:
    stage_1: str
    stage_2: str | None  # None: a build without stage-II figures
    t5: str  # auto (on the GPU, float16), 8bit, cpu, or cached (every prompt cached or imported: T5 never loads)


def estimate(setup: Setup, batches: dict[int, int]) -> dict[str, float]:
    """GiB allocated by PyTorch at the peak of each phase: `encode` (T5 alone), `sample` (the UNets), `peak` (the
    larger), and `before` (this project before issue 23: T5 loaded beside both UNets and kept)."""
    t5 = weight_bytes("T5-XXL", setup.t5) + (activation_bytes("T5-XXL", 1) if setup.t5 in ("auto", "8bit") else 0)
    unets = weight_bytes(setup.stage_1) + (weight_bytes(setup.stage_2) if setup.stage_2 else 0)
    activations = max(activation_bytes(setup.stage_1, batches[1]),
                      activation_bytes(setup.stage_2, batches[2]) if setup.stage_2 and batches[2] else 0)
    before_t5 = 0 if setup.t5 == "cached" else weight_bytes("T5-XXL", "auto")
    phases = {"encode": t5, "sample": unets + activations, "before": before_t5 + unets + activations}
    phases["peak"] = max(phases["encode"], phases["sample"])
    return {key: value / GIB for key, value in phases.items()}


def on_card(allocated_gib: float) -> float:
    """What a card must hold for a peak of `allocated_gib`: the allocator's slack and the CUDA context on top."""
    return allocated_gib * ALLOCATOR_SLACK + CUDA_CONTEXT_GIB


SETUPS = [Setup("IF-I-L", "IF-II-L", "auto"), Setup("IF-I-L", "IF-II-L", "8bit"), Setup("IF-I-L", "IF-II-L", "cpu"),
          Setup("IF-I-L", "IF-II-L", "cached"), Setup("IF-I-L", None, "auto"),
          Setup("IF-I-XL", "IF-II-L", "auto"), Setup("IF-I-XL", "IF-II-L", "8bit"), Setup("IF-I-XL", "IF-II-L", "cpu"),
          Setup("IF-I-XL", None, "cached"), Setup("IF-I-M", "IF-II-L", "auto")]
T5_WORDS = {"auto": "T5 on the GPU (cold cache)", "8bit": "t5: 8bit", "cpu": "t5: cpu", "cached": "all prompts cached or imported"}


def memory_table(config: dict) -> str:
    """The README's tables: what each model takes (GiB), then the peak of each setup and whether it fits each card
    class (peak x ALLOCATOR_SLACK + CUDA_CONTEXT_GIB <= the card's total)."""
    batches = unet_batches(config)
    rows = ["| model | parameters (meta device) | model card | weights on the GPU | activations (UNet batch) |",
            "|---|---|---|---|---|"]
    for arch, card in MODEL_CARD_PARAMETERS.items():
        count = sum(p.numel() for p in build(arch).parameters())
        stage = 2 if arch.startswith("IF-II") else 1
        batch = 1 if arch == "T5-XXL" else batches[stage]
        weights = (f"{weight_bytes(arch) / GIB:.2f} (float16, `wo` float32); 8bit: {weight_bytes(arch, '8bit') / GIB:.2f}"
                   if arch == "T5-XXL" else f"{weight_bytes(arch) / GIB:.2f} (float16)")
        rows.append(f"| {arch} | {count / 1e9:.2f} B | {card / 1e9:.2g} B | {weights} | "
                    f"{activation_bytes(arch, batch) / GIB:.2f} ({batch}) |")
    rows += ["", f"| setup | encode | sample | peak | needs on the card | before | {' | '.join(CARDS)} |",
             "|---" * (6 + len(CARDS)) + "|"]
    for setup in SETUPS:
        phases = estimate(setup, batches)
        stages = f"{setup.stage_1} + {setup.stage_2}" if setup.stage_2 else f"{setup.stage_1} only"
        fits = ["yes" if on_card(phases["peak"]) <= size else "no" for size in CARDS.values()]
        rows.append(f"| {stages}, {T5_WORDS[setup.t5]} | {phases['encode']:.1f} | {phases['sample']:.1f} | "
                    f"{phases['peak']:.1f} | {on_card(phases['peak']):.1f} | {phases['before']:.1f} | {' | '.join(fits)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    from .config import load

    print(memory_table(load(sys.argv[1] if len(sys.argv) > 1 else Path("config.yaml"))), end="")
