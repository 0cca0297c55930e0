"""The GPU path as users run it (issue 23), with the tiny models on the CPU: every prompt is encoded before any UNet
loads, T5 is gone before the first UNet loads, a cold build loads T5 once and each needed UNet once, a warm cache
never loads T5, a stage-I-only build never loads stage II, and a one-prompt edit reruns only that prompt's figures.

In-process tests drive the functions the workflow's jobs call, in the workflow's order; the workflow tests build a
small tiny-backend project of this file's own with Snakemake (jobs as threads of one process, profiles/default)."""

import copy
import gc
import os
import re
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import yaml

from diffusion_post import backends
from diffusion_post.backends import LOAD_MESSAGE
from diffusion_post.build import encode_prompt, make_result
from diffusion_post.project import copy_project
from diffusion_post.spec import encoded_prompts, prompt_digest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the tiny models gain nothing from more threads on a busy machine

SPEC = {"technique": "sample", "prompt": "a photo of a cat", "count": 1, "seed": 100, "start": 990, "stride": 330,
        "guidance_scale": 7.0, "unconditional_prompt": "", "thresholding": True, "noise_level": 250}
UPSAMPLED = {**SPEC, "technique": "upsample", "source": "cats", "source_technique": "sample", "stride": 495}


class LoadSpy:
    """Records, in order, each from_pretrained of T5 and of a UNet; at each UNet load, which T5 objects (the model
    and every parameter tensor, by weak reference) are still alive after a garbage collection."""

    def __init__(self, monkeypatch):
        from diffusers import UNet2DConditionModel
        from transformers import T5EncoderModel

        self.events: list[tuple] = []
        self.t5_objects: list[weakref.ref] = []
        load_t5, load_unet = T5EncoderModel.from_pretrained, UNet2DConditionModel.from_pretrained

        def t5(*args, **kwargs):
            model = load_t5(*args, **kwargs)
            self.t5_objects += [weakref.ref(model), *(weakref.ref(p) for p in model.parameters())]
            self.events.append(("t5",))
            return model

        def unet(model_id, *args, **kwargs):
            gc.collect()
            self.events.append(("unet", Path(model_id).name, sum(ref() is not None for ref in self.t5_objects)))
            return load_unet(model_id, *args, **kwargs)

        monkeypatch.setattr(T5EncoderModel, "from_pretrained", t5)
        monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", unet)


@pytest.fixture
def fresh_process(monkeypatch):
    """The backend registries of a new process (nothing loaded yet)."""
    monkeypatch.setattr(backends, "_LOADED", {})
    monkeypatch.setattr(backends, "_PROMPT_CACHES", {})


def test_t5_is_gone_before_the_first_unet_loads(tmp_path, monkeypatch, fresh_process):
    backend = {"name": "tiny", "device": "cpu", "cache_dir": str(tmp_path / "cache")}
    backends._tiny_folders(backend)  # the tiny models, written before the spies watch from_pretrained
    spy = LoadSpy(monkeypatch)
    for prompt in encoded_prompts(SPEC):  # the encode_prompt jobs, then the sampling jobs
        encode_prompt(prompt, backend, str(tmp_path / "results" / "prompt_embeds" / f"{prompt_digest(prompt)}.json"))
    assert spy.events == [("t5",)] and len(spy.t5_objects) > 10  # one T5 load for all prompts; still loaded here
    make_result("cats", SPEC, backend, {}, None, str(tmp_path / "results" / "cats.safetensors"))
    assert spy.events == [("t5",), ("unet", "stage_1", 0)]  # every T5 tensor was freed before the UNet loaded
    make_result("cats_stage_2", UPSAMPLED, backend, {}, str(tmp_path / "results" / "cats.safetensors"),
                str(tmp_path / "results" / "cats_stage_2.safetensors"))
    assert spy.events == [("t5",), ("unet", "stage_1", 0), ("unet", "stage_2", 0)]  # stage II on first use only

    spy.events.clear()  # a warm cache in a new process: no T5, not even for a prompt the cascade is asked for
    monkeypatch.setattr(backends, "_LOADED", {})
    monkeypatch.setattr(backends, "_PROMPT_CACHES", {})
    for prompt in encoded_prompts(SPEC):
        encode_prompt(prompt, backend, str(tmp_path / "again" / f"{prompt_digest(prompt)}.json"))
    make_result("cats", SPEC, backend, {}, None, str(tmp_path / "again" / "cats.safetensors"))
    assert spy.events == [("unet", "stage_1", 0)]
    assert (tmp_path / "again" / "cats.safetensors").read_bytes() == (tmp_path / "results" / "cats.safetensors").read_bytes()


def test_a_prompt_missed_by_the_encoding_phase_does_not_keep_t5(tmp_path, monkeypatch, fresh_process):
    """A cascade asked for a prompt that nobody encoded (library use, `diffusion-post figure` of old) encodes it
    with a T5 loaded for that call only."""
    backend = {"name": "tiny", "device": "cpu", "cache_dir": str(tmp_path / "cache")}
    backends._tiny_folders(backend)
    spy = LoadSpy(monkeypatch)
    cascade = backends.load_backend(backend)
    assert cascade.embed(["a photo of a dog"]).shape[0] == 1
    gc.collect()
    assert spy.events == [("unet", "stage_1", 0), ("t5",)]
    assert all(ref() is None for ref in spy.t5_objects)


# --- the workflow -------------------------------------------------------------------------------------------------

CONFIG = {
    "backend": {"name": "tiny"},
    "seed": 100,
    "defaults": {"start": 990, "stride": 330, "guidance_scale": 7, "unconditional_prompt": "", "thresholding": False,
                 "noise_level": 250, "count": 1},
    "inputs": {"test_image": "builtin:test_photo"},
    "figures": {
        "setup": {"cat": {"technique": "text_to_image", "prompts": ["a photo of a cat"]},
                  "cat_stage_2": {"technique": "upsample", "source": "cat", "stride": 495}},
        "denoising": {"forward": {"technique": "forward", "image": "test_image", "timesteps": [500]}},
        "sampling": {"dogs": {"technique": "sample", "prompt": "a photo of a dog"}},
    },
    "post": {"title": "Implementing Diffusion Models", "date": "2026-11-28", "published": True, "tags": ["diffusion"]},
}
STAGE_I_TARGETS = ["figures/cat.png", "figures/dogs.png", "figures/forward.png"]


def snakemake(cwd: Path, *args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr


def project(root: Path, cache: Path) -> Path:
    root.mkdir(exist_ok=True)
    copy_project(ROOT, root, cache)
    config = copy.deepcopy(CONFIG)
    config["backend"]["cache_dir"] = str(cache)
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def cold(tmp_path_factory) -> tuple[Path, str]:
    """The small project built (`snakemake --cores 1 figures`) with an empty cache: (folder, build log)."""
    root = tmp_path_factory.mktemp("cold")
    project(root, root / "cache")
    return root, snakemake(root, "--cores", "1", "figures")


def loads(log: str) -> list[str]:
    """The model loads and releases of a build log, in order."""
    return re.findall(r"^diffusion-post: (loading (?:text encoder|backend|stage_[12] UNet)|released text encoder)", log, re.M)


def test_a_cold_build_encodes_first_and_loads_each_model_once(cold):
    _, log = cold
    assert loads(log) == ["loading text encoder", "released text encoder", "loading backend", "loading stage_1 UNet",
                          "loading stage_2 UNet"]
    first_sampling = log.index("rule sample_")
    encodes = [m.start() for m in re.finditer(r"rule encode_prompt:", log)]
    assert len(encodes) == 3 and max(encodes) < first_sampling  # "a photo of a cat", "a photo of a dog", ""
    assert log.count(LOAD_MESSAGE) == 1 and f"{LOAD_MESSAGE} tiny on cpu (float32)" in log  # device and dtype named


def test_a_warm_stage_one_build_loads_neither_t5_nor_stage_two(cold, tmp_path):
    root, _ = cold
    again = project(tmp_path / "again", root / "cache")  # a fresh copy: no results, the warm cache
    log = snakemake(again, "--cores", "1", *STAGE_I_TARGETS)
    assert loads(log) == ["loading backend", "loading stage_1 UNet"]
    assert len(re.findall(r"rule encode_prompt:", log)) == 3  # each prompt's record, read from the cache
    for name in ("cat", "dogs"):
        assert (again / "results" / f"{name}.safetensors").read_bytes() == (root / "results" / f"{name}.safetensors").read_bytes()


def test_one_prompt_edit_reruns_exactly_its_figures_on_the_tiny_backend(cold, tmp_path):
    root, _ = cold
    edited = tmp_path / "edited"
    shutil.copytree(root, edited, symlinks=True, ignore=shutil.ignore_patterns("cache"))
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["figures"]["sampling"]["dogs"]["prompt"] = "a photo of a castle"
    (edited / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    dry = snakemake(edited, "-n", "figures")
    outputs = {f for line in re.findall(r"^\s+output: (.+)$", dry, re.M) for f in line.split(", ")}
    assert outputs == {f"results/prompt_embeds/{prompt_digest('a photo of a castle')}.json",
                       "results/dogs.safetensors", "results/dogs.seconds.json", "figures/dogs.png",
                       "site/assets/figures/dogs.png"}  # (its layout job publishes it)
