"""The trained backend's IF-shaped UNet pair, as diffusers UNet2DConditionModel configs, and its schedulers.

Stage I makes 64-px images; stage II upsamples 64 -> 128 px (the data holds no detail beyond 128 px: the Noto
glyphs are 136 x 128, and a 256-px stage II would cost 4x the training compute of the one H200 run we get).
Both predict 6 channels (noise + learned-range variance, like IF), on IF's cosine schedule, conditioned on one
384-d all-MiniLM-L6-v2 sentence vector per prompt (a sequence of one token): through cross-attention
(`text_proj` to the attention width) and through the timestep embedding (`addition_embed_type="text"`).
Stage II gets the noise level of its low-resolution input as `class_labels`, as IF-II does.

Sizes (`python -m diffusion_post.training.models` prints them): stage I 19 M parameters, 6.8 GFLOP per 64-px image;
stage II 5 M, 6.6 GFLOP per 128-px image; 48 MB of fp16 weights in all. Kept this small so that the figures of
the post sample on a 2-core CPU in minutes, and so that both stages train in the few minutes of one lent H200.
Attention where IF has it relative to the image: stage I at 16 and 8 px, stage II at 16 px only.
"""

import math

STAGE_SIZES = {1: 64, 2: 128}
TEXT_DIM = 384  # all-MiniLM-L6-v2
MAX_NOISE_LEVEL = 500  # stage II trains on low-res inputs noised to levels 0..499 (the post uses 250)

# preset -> stage -> (block_out_channels, layers_per_block, attention levels from the bottom)
PRESETS = {
    "device": {1: ([32, 64, 128, 256], 2, 2), 2: ([16, 32, 64, 128], 2, 1)},
    "micro": {1: ([16, 32], 1, 1), 2: ([8, 16, 32], 1, 1)},  # CPU tests: a few steps in seconds
}


def unet_config(stage: int, preset: str = "device", sample_size: int | None = None) -> dict:
    """UNet2DConditionModel keyword arguments of one stage (IF's block types, norms and embeddings)."""
    channels, layers, attention_levels = PRESETS[preset][stage]
    plain = len(channels) - attention_levels
    width = channels[-1]
    return dict(
        sample_size=sample_size or STAGE_SIZES[stage], in_channels=3 if stage == 1 else 6, out_channels=6,
        layers_per_block=layers, block_out_channels=channels,
        down_block_types=["ResnetDownsampleBlock2D"] * plain + ["SimpleCrossAttnDownBlock2D"] * attention_levels,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D"] * attention_levels + ["ResnetUpsampleBlock2D"] * plain,
        attention_head_dim=32 if preset == "device" else 8, cross_attention_dim=width,
        encoder_hid_dim=TEXT_DIM, encoder_hid_dim_type="text_proj",
        addition_embed_type="text", addition_embed_type_num_heads=4 if preset == "device" else 2,
        # IF group-normalizes its 77 T5 tokens before cross-attention; over our ONE token a group norm would
        # normalize each group of channels away (to zero where a group holds one channel), so none here
        cross_attention_norm=None, resnet_time_scale_shift="scale_shift", act_fn="gelu",
        norm_num_groups=math.gcd(*channels) // 2, class_embed_type="timestep" if stage == 2 else None,
    )


def make_unet(stage: int, preset: str = "device", sample_size: int | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(stage, preset, sample_size))


def if_scheduler(stage: int):
    """IF's DDPMScheduler config (REFERENCE §2), as the tiny models have it: thresholding at 1.5 / 1.0."""
    from ..backends.tiny import _scheduler

    return _scheduler(1.5 if stage == 1 else 1.0)


def image_noising_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


if __name__ == "__main__":
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    for preset in PRESETS:
        for stage in (1, 2):
            with torch.device("meta"):
                unet = make_unet(stage, preset).eval()
                size = STAGE_SIZES[stage]
                x = torch.zeros(1, unet.config.in_channels, size, size)
                labels = torch.zeros(1, dtype=torch.long) if stage == 2 else None
                with FlopCounterMode(display=False) as flops:
                    unet(x, 500, encoder_hidden_states=torch.zeros(1, 1, TEXT_DIM), class_labels=labels)
            n = sum(p.numel() for p in unet.parameters())
            print(f"{preset} stage {stage}: {n / 1e6:.2f} M parameters, {2 * n / 2**20:.1f} MiB in fp16, "
                  f"{flops.get_total_flops() / 1e9:.2f} GFLOP per {size}-px image")
