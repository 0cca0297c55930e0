"""Backends: the tiny IF folders, load_cascade (also offline and without weights), and the prompt-embedding cache."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffusion_post.backends.deepfloyd import MAX_TOKENS, ModelUnavailable, load_cascade
from diffusion_post.backends.prompt_cache import PromptCache
from diffusion_post.backends.tiny import make_tiny_if

from conftest import OTHER_PROMPTS, PROMPT


def test_tiny_folders_have_the_hub_layout(tiny_folders):
    stage_1, stage_2 = tiny_folders
    for folder, files in {
        stage_1 / "unet": ["config.json", "diffusion_pytorch_model.safetensors"],
        stage_1 / "scheduler": ["scheduler_config.json"],
        stage_1 / "text_encoder": ["config.json", "model.safetensors"],
        stage_1 / "tokenizer": ["tokenizer.json", "tokenizer_config.json"],
        stage_2 / "unet": ["config.json", "diffusion_pytorch_model.safetensors"],
        stage_2 / "scheduler": ["scheduler_config.json"],
        stage_2 / "image_noising_scheduler": ["scheduler_config.json"],
    }.items():
        for name in files:
            assert (folder / name).is_file(), folder / name

    unet_1 = json.loads((stage_1 / "unet" / "config.json").read_text())
    unet_2 = json.loads((stage_2 / "unet" / "config.json").read_text())
    assert (unet_1["in_channels"], unet_1["out_channels"], unet_1["sample_size"]) == (3, 6, 32)
    assert (unet_2["in_channels"], unet_2["out_channels"], unet_2["sample_size"]) == (6, 6, 64)
    assert unet_2["class_embed_type"] == "timestep"  # the noise level enters as class labels
    for stage, max_value in [(stage_1, 1.5), (stage_2, 1.0)]:
        config = json.loads((stage / "scheduler" / "scheduler_config.json").read_text())
        assert config["variance_type"] == "learned_range" and config["beta_schedule"] == "squaredcos_cap_v2"
        assert config["thresholding"] and config["dynamic_thresholding_ratio"] == 0.95
        assert config["sample_max_value"] == max_value


def test_make_tiny_if_does_not_rewrite_existing_folders(tiny_folders):
    weights = tiny_folders[0] / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert make_tiny_if(tiny_folders[0].parent, seed=0, stage_1_size=32, stage_2_size=64) == tiny_folders
    assert weights.stat().st_mtime_ns == before


def test_load_cascade_gives_if_shaped_denoisers(cascade, embeds):
    assert cascade.description["backend"] == "tiny" and cascade.description["dtype"] == "float32"
    stage_1, stage_2 = cascade.stage_1, cascade.stage_2.denoiser
    assert (stage_1.sample_size, stage_2.sample_size) == (32, 64)
    assert stage_1.alphas_cumprod.shape == (1000,) and stage_1.alphas_cumprod.dtype == torch.float32
    cond = embeds[PROMPT]
    assert cond.shape == (1, MAX_TOKENS, 32)
    with torch.no_grad():
        assert stage_1(torch.zeros(2, 3, 32, 32), 500, cond.expand(2, -1, -1)).shape == (2, 6, 32, 32)
        out = stage_2(torch.zeros(1, 6, 64, 64), 500, cond, noise_level=250)
        assert out.shape == (1, 6, 64, 64)
        assert not torch.equal(out, stage_2(torch.zeros(1, 6, 64, 64), 500, cond, noise_level=0))  # class_labels used


def test_embeddings_equal_ifpipeline_encode_prompt(cascade, tiny_folders):
    from diffusers import IFPipeline
    from transformers import T5EncoderModel, T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(tiny_folders[0], subfolder="tokenizer")
    assert len(tokenizer) > 30  # a real vocabulary, not the 4-token tokenizer of the transformers 5 trap
    assert len(tokenizer("a high quality photo").input_ids) == 5  # 4 words + </s>
    pipe = IFPipeline(unet=cascade.stage_1.unet, scheduler=None, tokenizer=tokenizer,
                      text_encoder=T5EncoderModel.from_pretrained(tiny_folders[0], subfolder="text_encoder"),
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    prompts = [PROMPT, "  A Photo of a DOG ", " ".join(["dog"] * 100)]
    theirs, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device="cpu", clean_caption=False)
    ours = cascade.embed(prompts)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert not torch.allclose(ours[0], ours[1])


def test_load_cascade_offline_without_the_model_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import time
    with pytest.raises(ModelUnavailable) as error:
        load_cascade("DeepFloyd/IF-I-nonexistent-v1.0", None, device="cpu", cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and "IF-I-nonexistent" in message
    assert "licence" in message and "login" in message and "local folder" in message


def test_load_cascade_on_a_gpu_loads_a_folder_without_fp16_files_as_fp16(tiny_folders, tmp_path, monkeypatch):
    """On CUDA, load_cascade asks for the fp16 weight variant; a local fp32 folder (the tiny models) has none.
    Simulated on the CPU: CUDA 'available', and Module.to keeps the model where it is."""
    module_to = torch.nn.Module.to
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: module_to(
        self, *[a for a in args if not (isinstance(a, torch.device) and a.type == "cuda")], **kwargs))
    cascade = load_cascade(str(tiny_folders[0]), None, cache_dir=tmp_path)
    assert cascade.description["dtype"] == "float16" and cascade.stage_1.unet.dtype == torch.float16


def test_load_cascade_with_a_missing_component_says_which(tiny_folders, tmp_path):
    broken = tmp_path / "stage_2"
    shutil.copytree(tiny_folders[1], broken)
    shutil.rmtree(broken / "image_noising_scheduler")
    with pytest.raises(ModelUnavailable, match="image_noising_scheduler"):
        load_cascade(str(tiny_folders[0]), str(broken), device="cpu", cache_dir=tmp_path / "embeds")


# --- the prompt-embedding cache -----------------------------------------------------------------------------------

class _CountingEncoder:
    def __init__(self):
        self.made, self.calls = 0, []

    def make(self):
        self.made += 1
        return self.encode

    def encode(self, prompts):
        self.calls.append(list(prompts))
        return torch.stack([torch.full((77, 4), float(len(p))) for p in prompts])


def test_prompt_cache_encodes_each_prompt_once(tmp_path):
    encoder = _CountingEncoder()
    cache = PromptCache(tmp_path, "some/encoder", encoder.make)
    first = cache([PROMPT, "", PROMPT])
    assert first.shape == (3, 77, 4) and torch.equal(first[0], first[2])
    assert encoder.calls == [[PROMPT, ""]]
    second = cache(["", PROMPT])
    assert encoder.calls == [[PROMPT, ""]] and encoder.made == 1  # no second encoder call, no second load
    assert torch.equal(second, first[[1, 0]])

    fresh_process = PromptCache(tmp_path, "some/encoder", encoder.make)  # the cache lives on disk
    assert torch.equal(fresh_process([PROMPT]), first[:1]) and encoder.made == 1
    other_encoder = PromptCache(tmp_path, "another/encoder", encoder.make)  # keyed by encoder
    other_encoder([PROMPT])
    assert encoder.made == 2


def test_cascade_embed_reads_cached_prompts_without_the_encoder(cascade, monkeypatch):
    prompts = cascade.stage_1.prompts
    assert prompts.path(PROMPT).exists()  # written by the session's embeds fixture
    monkeypatch.setattr(prompts, "_encoder", lambda missing: pytest.fail(f"encoded again: {missing}"))
    assert cascade.embed([PROMPT, OTHER_PROMPTS[0]]).shape == (2, 77, 32)


def test_import_dict_loads_a_torch_saved_table(tmp_path):
    table = {"a rocket ship": torch.randn(1, 77, 8), "a pencil": torch.randn(77, 8)}
    torch.save(table, tmp_path / "prompt_embeds_dict.pth")
    cache = PromptCache(tmp_path / "cache", "course", lambda: pytest.fail("the encoder must not be loaded"))
    assert cache.import_dict(tmp_path / "prompt_embeds_dict.pth") == 2
    embeds = cache(["a rocket ship", "a pencil"])
    assert torch.equal(embeds[0], table["a rocket ship"][0]) and torch.equal(embeds[1], table["a pencil"])


class _Payload:
    """Unpickling this would run code (touch a file); weights_only must refuse it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_import_dict_refuses_objects_that_are_not_tensors(tmp_path):
    cache = PromptCache(tmp_path / "cache", "course", lambda: pytest.fail("the encoder must not be loaded"))
    marker = tmp_path / "code_ran"
    torch.save({"a pencil": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refused: it holds Python objects"):  # one line, not 17 frames
        cache.import_dict(tmp_path / "evil.pth")
    assert not marker.exists()

    torch.save({"a pencil": [1.0, 2.0]}, tmp_path / "list.pth")  # loadable, but not a tensor
    with pytest.raises(ValueError, match="prompt -> tensor"):
        cache.import_dict(tmp_path / "list.pth")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))
