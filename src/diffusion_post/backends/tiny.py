"""Tiny IF-architecture models with random weights, made offline and deterministically from a seed and written
in diffusers' hub folder layout, so tests load them through exactly the code that loads DeepFloyd IF."""

import json
from pathlib import Path

import torch

VOCAB_WORDS = ("a high quality photo of the an oil painting people around campfire man wearing hat rocket ship "
               "pencil skull castle dog cat rainy day old waterfall snowy mountain village lithograph flower "
               "amalfi coast").split()


def offline_tokenizer():
    """A T5-style Unigram tokenizer built without the hub (see shared REFERENCE §3 for the transformers 5 trap)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{w}", -1.0 - i / 100) for i, w in enumerate(VOCAB_WORDS)]
    pieces += [(c, -10.0) for c in "\u2581abcdefghijklmnopqrstuvwxyz0123456789.,'-"]
    model = Tokenizer(models.Unigram(pieces, unk_id=2))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=model, extra_ids=0, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _unet(stage: int, sample_size: int, text_dim: int):
    """diffusers' own tiny IF UNet (REFERENCE §3); stage II gets two more resolution levels so that its attention
    runs at 1/8 of the 256-px size, as the real IF-II does, instead of over 128 x 128 tokens."""
    from diffusers import UNet2DConditionModel

    levels = 2 if stage == 1 else 4
    return UNet2DConditionModel(
        sample_size=sample_size, layers_per_block=1, block_out_channels=[32, 64] if stage == 1 else [8, 16, 32, 64],
        down_block_types=["ResnetDownsampleBlock2D"] * (levels - 1) + ["SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D"] + ["ResnetUpsampleBlock2D"] * (levels - 1),
        in_channels=3 if stage == 1 else 6, out_channels=6, cross_attention_dim=32, encoder_hid_dim=text_dim,
        attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
        class_embed_type="timestep" if stage == 2 else None, norm_num_groups=8,
    )


def _scheduler(max_value: float):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                         prediction_type="epsilon", thresholding=True, dynamic_thresholding_ratio=0.95,
                         sample_max_value=max_value, clip_sample=True)


def make_tiny_if(folder: Path | str, seed: int = 0, stage_1_size: int = 64, stage_2_size: int = 256) -> tuple[Path, Path]:
    """Write stage_1/ (unet, scheduler, text_encoder, tokenizer) and stage_2/ (unet, scheduler,
    image_noising_scheduler) under `folder`, unless already there. Returns the two model folders."""
    from diffusers import DDPMScheduler
    from transformers import T5Config, T5EncoderModel

    folder = Path(folder)
    stage_1, stage_2 = folder / "stage_1", folder / "stage_2"
    marker = folder / "tiny.json"
    spec = {"seed": seed, "stage_1_size": stage_1_size, "stage_2_size": stage_2_size, "layout": 3}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return stage_1, stage_2

    tokenizer = offline_tokenizer()
    with torch.random.fork_rng():  # deterministic weights without touching the caller's global RNG
        torch.manual_seed(seed)
        config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                          relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        text_encoder = T5EncoderModel(config)
        unet_1 = _unet(1, stage_1_size, config.d_model)
        unet_2 = _unet(2, stage_2_size, config.d_model)

    tokenizer.save_pretrained(stage_1 / "tokenizer")
    text_encoder.save_pretrained(stage_1 / "text_encoder")
    unet_1.save_pretrained(stage_1 / "unet")
    _scheduler(1.5).save_pretrained(stage_1 / "scheduler")
    unet_2.save_pretrained(stage_2 / "unet")
    _scheduler(1.0).save_pretrained(stage_2 / "scheduler")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(stage_2 / "image_noising_scheduler")
    marker.write_text(json.dumps(spec))
    return stage_1, stage_2
