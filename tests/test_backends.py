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


def test_prompt_cache_shared_by_two_threads_loads_its_encoder_once(tmp_path):
    """Jobs running as threads of one Snakemake process (force-use-threads) share a backend's cache."""
    import threading
    import time

    made = []

    def make():
        made.append(1)
        time.sleep(0.2)  # a slow load: the other thread asks meanwhile
        return _CountingEncoder().encode

    cache = PromptCache(tmp_path, "some/encoder", make)
    results, errors = {}, []

    def job(name):
        try:
            cache.encode([PROMPT, "a photo of a dog"])
            results[name] = cache([PROMPT, "a photo of a dog"])
        except Exception as error:  # a half-written file read by the other thread, a clash of temporary files
            errors.append(error)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(made) == 1
    assert torch.equal(results[0], results[1])
    assert sorted(p.name for p in cache.folder.iterdir()) == sorted(cache.path(p).name for p in [PROMPT, "a photo of a dog"])


def test_embeddings_imported_for_if_i_l_serve_an_xl_stage_one_offline(tmp_path, monkeypatch, capsys):
    """Every IF-I stage uses the same T5: the course's embeddings (imported as IF-I-L's by default) are found with
    stage_1: IF-I-XL, and T5 is never loaded (offline, it could not be)."""
    import huggingface_hub.constants

    from diffusion_post import backends
    from diffusion_post.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(backends, "_PROMPT_CACHES", {})
    table = {PROMPT: torch.randn(1, MAX_TOKENS, 4096), "": torch.randn(1, MAX_TOKENS, 4096)}
    torch.save(table, tmp_path / "prompt_embeds_dict.pth")
    assert main(["import-embeddings", str(tmp_path / "prompt_embeds_dict.pth"), "--cache-dir", str(tmp_path)]) == 0
    for stage_1 in ("DeepFloyd/IF-I-XL-v1.0", "DeepFloyd/IF-I-M-v1.0"):
        backend = {"name": "deepfloyd", "stage_1": stage_1, "cache_dir": str(tmp_path), "device": "cpu"}
        cache = backends.encode_prompts(backend, [PROMPT, ""])  # would load T5 (and fail offline) on a miss
        assert torch.equal(cache([PROMPT]), table[PROMPT])
    assert "loading text encoder" not in capsys.readouterr().err


def test_deepfloyd_without_a_usable_gpu_stops_with_one_line_unless_cpu_is_asked_for(monkeypatch):
    from diffusion_post.backends.deepfloyd import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelUnavailable) as error:
        resolve_device(None, "deepfloyd")
    message = str(error.value)
    assert "\n" not in message and "needs a CUDA GPU" in message and "device: cpu" in message
    assert "CPU-only build" in message or "CUDA" in message.split("(", 1)[1]  # why torch finds none
    assert resolve_device("cpu", "deepfloyd") == torch.device("cpu")  # written on purpose
    assert resolve_device(None, "tiny") == torch.device("cpu")  # the test models fall back quietly


def _pretend_cuda(monkeypatch):
    """CUDA 'available' on the CPU: Module.to keeps a model where it is."""
    module_to = torch.nn.Module.to
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: module_to(
        self, *[a for a in args if not (isinstance(a, torch.device) and a.type == "cuda")], **kwargs))


def _record_loads(monkeypatch, model_class) -> list[dict]:
    calls, load = [], model_class.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(model_class, "from_pretrained", spy)
    return calls


def test_t5_on_a_gpu_asks_for_the_fp16_files_first_then_falls_back(tiny_folders, tmp_path, monkeypatch):
    from transformers import T5EncoderModel

    from diffusion_post.backends.deepfloyd import t5_prompt_cache

    _pretend_cuda(monkeypatch)
    calls = _record_loads(monkeypatch, T5EncoderModel)
    cache = t5_prompt_cache(str(tiny_folders[0]), cache_dir=tmp_path)
    cache.encode([PROMPT])
    assert [c.get("variant") for c in calls] == ["fp16", None]  # the tiny folder has no fp16 files
    assert all(c["dtype"] == torch.float16 for c in calls)
    assert load_file_dtype(cache.path(PROMPT)) == torch.float16


def load_file_dtype(path) -> torch.dtype:
    from safetensors.torch import load_file

    return load_file(path)["embeds"].dtype


def test_t5_cpu_encodes_in_bfloat16_on_the_cpu_beside_a_gpu(tiny_folders, tmp_path, monkeypatch, capsys):
    from transformers import T5EncoderModel

    from diffusion_post.backends.deepfloyd import t5_prompt_cache

    _pretend_cuda(monkeypatch)
    calls = _record_loads(monkeypatch, T5EncoderModel)
    cache = t5_prompt_cache(str(tiny_folders[0]), cache_dir=tmp_path, t5="cpu")
    cache.encode([PROMPT])
    assert calls[-1]["dtype"] == torch.bfloat16 and load_file_dtype(cache.path(PROMPT)) == torch.bfloat16
    assert "on cpu (bfloat16)" in capsys.readouterr().err  # the load line names device and precision


def test_t5_8bit_without_bitsandbytes_says_what_to_install(tiny_folders, tmp_path, monkeypatch):
    import importlib.util

    from diffusion_post import config as post_config
    from diffusion_post.backends.deepfloyd import t5_prompt_cache

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    cache = t5_prompt_cache(str(tiny_folders[0]), cache_dir=tmp_path, t5="8bit", device="cuda")
    with pytest.raises(ModelUnavailable) as error:
        cache.encode([PROMPT])
    assert "\n" not in str(error.value) and "pip install 'diffusion-post[t5-8bit]'" in str(error.value)
    assert not any(tmp_path.rglob("*.safetensors"))
    root = Path(__file__).resolve().parents[1]
    config = post_config.load_yaml(root / "config.yaml")
    config["backend"] = {"name": "tiny", "t5": "8bit"}
    with pytest.raises(post_config.ConfigError, match=r"t5: 8bit needs bitsandbytes"):  # before any job runs
        post_config.check(config, root)


def test_out_of_gpu_memory_is_one_line_with_what_to_change(tmp_path, monkeypatch):
    from diffusion_post import build

    def out_of_memory(backend):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                           "capacity of 14.75 GiB of which 1.06 GiB is free.\nmore lines")

    monkeypatch.setattr(build, "load_backend", out_of_memory)
    with pytest.raises(build.OutOfMemory) as error:
        build.make_result("cats", {"technique": "sample"}, {"name": "deepfloyd"}, {}, None, str(tmp_path / "cats.safetensors"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("out of GPU memory while sampling the figure cats")
    assert "Tried to allocate 2.00 GiB" in message
    assert all(advice in message for advice in ("smaller stage I", "t5: cpu or 8bit", "import-embeddings"))
    assert not (tmp_path / "cats.safetensors").exists()


def test_a_stage_one_cascade_never_loads_stage_two(tiny_folders, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    calls = []
    load = UNet2DConditionModel.from_pretrained
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", lambda model_id, **kw: calls.append(Path(model_id).name) or load(model_id, **kw))
    cascade = load_cascade(str(tiny_folders[0]), str(tiny_folders[1]), device="cpu", cache_dir=tmp_path)
    assert calls == ["stage_1"]
    assert cascade.stage_2.denoiser.sample_size == 64 and calls == ["stage_1", "stage_2"]
    cascade.stage_2
    assert calls == ["stage_1", "stage_2"]  # once
