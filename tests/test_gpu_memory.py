"""The GPU-memory estimate of the README (diffusion_post.full_size) and the device script that measures it
(scripts/gpu_memory.py), checked without a GPU: meta-device parameter counts, the README's table as the estimate
prints it, and the device path run end to end on the CPU with small stand-in models."""

import importlib.util
import json
from pathlib import Path

import torch

from diffusion_post import config as post_config, full_size

ROOT = Path(__file__).resolve().parents[1]


def test_t5_weights_are_counted_with_its_float32_wo_layers():
    model = full_size.build("T5-XXL")
    total = sum(p.numel() for p in model.parameters())
    wo = sum(p.numel() for name, p in model.named_parameters() if ".wo." in name)
    assert 4.7e9 < total < 4.8e9 and wo == 24 * 4096 * 10240
    assert full_size.weight_bytes("T5-XXL") == 2 * (total - wo) + 4 * wo  # ~11.5 GB, not 9.5
    assert full_size.weight_bytes("T5-XXL", "8bit") < full_size.weight_bytes("T5-XXL") and full_size.weight_bytes("T5-XXL", "cpu") == 0
    assert 4.25e9 < sum(p.numel() for p in full_size.build("IF-I-XL").parameters()) < 4.35e9  # the published config


def test_by_the_estimate_a_cold_cache_fits_the_issue_s_cards():
    """Issue 23's acceptance, by the README's own accounting: IF-I-L + IF-II-L with a cold cache fits a 16-GB card,
    IF-I-XL + IF-II-L a 24-GB card; before (T5 resident beside both UNets) the first did not."""
    batches = full_size.unet_batches(post_config.load(ROOT / "config.yaml"))
    assert batches == {1: 6, 2: 6}  # the three-view anagram and its stage II, with CFG
    small = full_size.estimate(full_size.Setup("IF-I-L", "IF-II-L", "auto"), batches)
    large = full_size.estimate(full_size.Setup("IF-I-XL", "IF-II-L", "auto"), batches)
    assert full_size.on_card(small["peak"]) <= full_size.CARDS["16 GB (T4: 15.0)"]
    assert full_size.on_card(large["peak"]) <= full_size.CARDS["24 GB (A10: 22.5)"]
    assert full_size.on_card(small["before"]) > full_size.CARDS["16 GB (T4: 15.0)"]
    assert small["encode"] == large["encode"] and small["peak"] == small["encode"]  # T5 alone is the peak


def test_the_readme_table_is_the_estimate_s_output():
    table = full_size.memory_table(post_config.load(ROOT / "config.yaml"))
    assert table in (ROOT / "README.md").read_text(), "README's GPU-memory table is stale: python -m diffusion_post.full_size"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_memory", ROOT / "scripts" / "gpu_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stand_in(arch: str, device: str = "meta"):
    """A small model in place of `arch`, so that the device path runs on the CPU in seconds."""
    from transformers import T5Config, T5EncoderModel

    from diffusion_post.backends.tiny import _unet, offline_tokenizer

    with torch.device(device):
        if arch == "T5-XXL":
            return T5EncoderModel(T5Config(vocab_size=len(offline_tokenizer()), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                           num_heads=4, relative_attention_num_buckets=8))
        stage = 2 if arch.startswith("IF-II") else 1
        return _unet(stage, 32 * stage, 32)


def test_the_device_script_runs_the_workflow_s_path_on_the_cpu(tmp_path, monkeypatch):
    """The GPU run's own steps with stand-ins: random fp16 weights written in the hub layout, then a cold-cache
    build in a fresh process through encode_prompt and make_result (T5 released before the first UNet)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    script = _script()
    stage_1, stage_2 = script.write_full_size(tmp_path / "models", "IF-I-L", "IF-II-L", "cpu", build=_stand_in)
    assert sorted(p.name for p in (stage_1 / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    measured = script.run_setup(stage_1, stage_2, "cpu", tmp_path)
    assert "error" not in measured, measured
    assert measured["loads"] == ["loading text encoder", "released text encoder", "loading backend",
                                 "loading stage_1 UNet", "loading stage_2 UNet"]
    assert json.loads(json.dumps(measured))["device"] == "cpu"
