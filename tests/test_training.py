"""The trained backend without a GPU (issue 10): its data set, the hybrid loss, the training loop (micro models, a few
CPU steps), resuming, the shipped-weights folder and its round trip through the device's $OUT, the backend loading
such a folder through load_cascade and sampling a figure, and the device script's dry run."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffusion_post import figures, schedule
from diffusion_post.backends import load_backend
from diffusion_post.backends.trained import NOT_SHIPPED, WeightsMissing, load_trained
from diffusion_post.post import backend_summary
from diffusion_post.training import DATA_VERSION
from diffusion_post.training import data as training_data
from diffusion_post.training.losses import hybrid_loss
from diffusion_post.training.ship import unpack_parts, write_parts, write_weights_folder
from diffusion_post.training.train import Settings, Trainer, fixed_batch_loss, train
from diffusion_post.training.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def hashed_encoder():
    """A stand-in sentence encoder: a fixed random unit vector per text, zeros for the empty prompt (as MiniLM)."""
    def encode(texts):
        rows = []
        for text in texts:
            g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little"))
            v = torch.randn(384, generator=g)
            rows.append(v / v.norm() if text else torch.zeros(384))
        return torch.stack(rows)
    return encode


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """12 emoji + one crop of each sample photo (19 images), without keywords, with the stand-in encoder."""
    path = tmp_path_factory.mktemp("train_data") / f"data-v{DATA_VERSION}.npz"
    training_data.build_dataset(path, None, hashed_encoder, emoji_limit=12, crops_per_photo=1)
    return path


def micro(stage: int = 1, **overrides) -> Settings:
    size = {1: 16, 2: 32}[stage]
    return Settings(**{"stage": stage, "preset": "micro", "size": size, "batch": 4, "steps": 4, "lr": 2e-3,
                       "warmup": 1, **overrides})


# --- data -----------------------------------------------------------------------------------------------------------

def test_small_data_file_holds_what_its_manifest_says(small_data):
    manifest = json.loads(small_data.with_suffix(".json").read_text())
    with np.load(small_data) as data:
        images, embeds, flippable = data["images"], data["embeds"], data["flippable"]
        assert images.shape == (manifest["count"], 128, 128, 3) and images.dtype == np.uint8
        assert embeds.shape == (manifest["count"], 2, 384)
        assert len(data["captions"]) == manifest["count"] == sum(s["count"] for s in manifest["sources"])
    assert manifest["count"] == 12 + len(training_data.PHOTOS)
    assert manifest["sha256"] == training_data.sha256(small_data) and manifest["bytes"] == small_data.stat().st_size
    assert all(s["licence"] for s in manifest["sources"])
    assert 0 < flippable.sum() < len(flippable)  # flags and symbols are never mirrored, photos are
    assert not flippable[[i for i, c in enumerate(np.load(small_data)["captions"]) if str(c).startswith("flag")]].any()


def test_emoji_entries_use_emojibase_labels_and_keywords_and_block_mirroring():
    keywords = {"\U0001F431": {"label": "cat face", "tags": ["animal", "cat", "face", "pet"], "group": 3},
                "\u2B05": {"label": "left arrow", "tags": ["arrow", "west"], "group": 8}}  # keys: training_data.plain
    entries = {ch: rest for ch, *rest in training_data.emoji_entries(keywords)}
    assert entries["\U0001F431"] == ["cat face", "cat face, animal, pet", True]  # tags already in the label dropped
    assert entries["\u2B05\ufe0f"][2] is False  # a mirrored left arrow points right
    assert not any(training_data.SKIN_TONES & set(ch) for ch in entries)


def test_augment_flips_only_where_allowed_and_keeps_colours():
    x = -torch.ones(64, 3, 32, 32)
    x[:, 1, :, 16:] = 1.0  # green on the right half only
    g = torch.Generator().manual_seed(0)
    kept = training_data.augment(x, torch.zeros(64, dtype=torch.bool), g)
    right_greener = kept[:, 1, :, 20:].mean((1, 2)) > kept[:, 1, :, :12].mean((1, 2))
    assert right_greener.all()  # never mirrored
    flipped = training_data.augment(x, torch.ones(64, dtype=torch.bool), g)
    share = (flipped[:, 1, :, :12].mean((1, 2)) > flipped[:, 1, :, 20:].mean((1, 2))).float().mean()
    assert 0.3 < share < 0.7  # about half mirrored
    green = x.clone()
    green[:, 0], green[:, 1], green[:, 2] = -1, 0.6, -1
    jittered = training_data.augment(green, torch.ones(64, dtype=torch.bool), g)
    assert (jittered[:, 1].mean((1, 2)) > jittered[:, 0].mean((1, 2)) + 1).all()  # still green: no hue change
    assert (jittered - green).abs().max() > 0.01  # but jittered


def test_training_set_batch_drops_captions_to_the_empty_prompt(small_data):
    data = training_data.TrainingSet(small_data)
    g = torch.Generator().manual_seed(0)
    x, cond = data.batch(torch.arange(len(data)).repeat(20), g, caption_dropout=0.25)
    assert x.shape == (20 * len(data), 3, 128, 128) and -1 <= x.min() and x.max() <= 1
    dropped = (cond.abs().sum(dim=(1, 2)) == 0).float().mean()
    assert 0.15 < dropped < 0.35
    kept = cond[cond.abs().sum(dim=(1, 2)) > 0, 0]
    assert torch.allclose(kept.norm(dim=1), torch.ones(len(kept)), atol=1e-2)  # unit caption vectors (fp16)


# --- the loss -------------------------------------------------------------------------------------------------------

def test_hybrid_loss_vlb_term_vanishes_only_at_the_true_posterior():
    from diffusers import DDPMScheduler

    alphas_cumprod = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([1, 10, 500, 999])
    x_t = schedule.add_noise(x0, eps, alphas_cumprod[t].view(-1, 1, 1, 1))
    # v = -1 selects log beta_tilde, the true posterior variance (DDPM eq. 7); eps_hat = eps gives the true mean
    exact = torch.cat([eps, -torch.ones_like(eps)], dim=1)
    loss, l_simple, l_t = hybrid_loss(exact, x0, x_t, eps, t, alphas_cumprod)
    assert l_simple == 0 and l_t.abs() < 1e-5 and loss.abs() < 1e-5
    _, _, l_t_upper = hybrid_loss(torch.cat([eps, torch.ones_like(eps)], dim=1), x0, x_t, eps, t, alphas_cumprod)
    assert l_t_upper > 1e-3  # the upper bound beta_t is not the posterior variance

    out = torch.cat([eps + 0.1 * torch.randn(eps.shape, generator=g), torch.zeros_like(eps)], dim=1).requires_grad_()
    grad_simple = torch.autograd.grad(((out[:, :3] - eps) ** 2).mean(), out)[0]
    grad = torch.autograd.grad(hybrid_loss(out, x0, x_t, eps, t, alphas_cumprod)[0], out)[0]
    torch.testing.assert_close(grad[:, :3], grad_simple[:, :3])  # the VLB term does not move the mean (stop-grad)
    assert grad[:, 3:].abs().sum() > 0  # it trains the variance channels


# --- the loop -------------------------------------------------------------------------------------------------------

def test_training_lowers_the_loss_of_a_fixed_batch(small_data):
    data = training_data.TrainingSet(small_data)
    trainer = Trainer(micro(steps=20), data)
    fixed = trainer.draw()  # images, t, noise and captions kept aside
    before = fixed_batch_loss(trainer, fixed)
    for _ in range(20):
        trainer.train_step()
    after = fixed_batch_loss(trainer, fixed)
    assert before > 0.8  # an untrained UNet's noise estimate is about as far from eps as eps is long
    assert after < 0.6 * before, (before, after)
    assert all(np.isfinite(r["loss"]) for r in trainer.history)


def test_losses_read_back_every_few_steps_are_those_of_every_step(small_data, capsys):
    """Reading the losses back from the device every few steps (one wait for the GPU) records the same losses, for
    the same steps, and trains the same weights, as reading them at every step."""
    data = training_data.TrainingSet(small_data)
    every = train(micro(steps=5, sync_every=1), data, progress=False)
    batched = train(micro(steps=5, sync_every=3), data, progress=False)
    assert [r["step"] for r in batched.history] == [1, 2, 3, 4, 5]
    assert batched.history == every.history
    assert all(torch.equal(a, b) for a, b in zip(batched.ema.parameters(), every.ema.parameters()))

    trainer = Trainer(micro(sync_every=3), data)
    for _ in range(5):
        trainer.train_step()
    assert [step for step, _ in trainer._pending] == [4, 5]  # read back at step 3, not at every step
    assert not any(loss.requires_grad for _, losses in trainer._pending for loss in losses)  # no graph kept alive
    with pytest.raises(ValueError, match="sync_every"):
        micro(sync_every=0)
    with pytest.raises(SystemExit) as exit:  # the command line says it in one line, before loading any data
        train_main(["--data", "missing.npz", "--work", "w", "--weights", "w", "--sync-every", "0"])
    assert exit.value.code == 2 and "error: sync_every is 0" in capsys.readouterr().err


def test_resuming_from_a_checkpoint_continues_the_same_run(small_data, tmp_path):
    data = training_data.TrainingSet(small_data)
    straight = train(micro(stage=2, steps=4, batch=2), data, progress=False)
    checkpoint = tmp_path / "checkpoint.pt"
    train(micro(stage=2, steps=2, batch=2), data, checkpoint=checkpoint, progress=False)
    resumed = train(micro(stage=2, steps=4, batch=2), data, checkpoint=checkpoint, progress=False)
    assert resumed.step == 4 and [r["step"] for r in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in resumed.history], [r["loss"] for r in straight.history], rtol=1e-5)
    for a, b in zip(resumed.ema.parameters(), straight.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    other = training_data.TrainingSet(small_data)
    other.manifest = {**other.manifest, "sha256": "something else"}
    with pytest.raises(ValueError, match="other data"):
        train(micro(stage=2, steps=5, batch=2), other, checkpoint=checkpoint, progress=False)
    with pytest.raises(ValueError, match="another model"):
        train(micro(stage=2, steps=5, batch=2, size=64), data, checkpoint=checkpoint, progress=False)


# --- the shipped folder, the backend ---------------------------------------------------------------------------------

def test_trained_backend_without_weights_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no weights/trained here
    with pytest.raises(WeightsMissing) as error:
        load_backend({"name": "trained", "cache_dir": str(tmp_path / "cache")})
    assert str(error.value) == NOT_SHIPPED and "\n" not in str(error.value)


def test_device_preset_weights_fit_the_return_trip_and_come_back_identical(small_data, tmp_path):
    """Full-size (device preset) random UNets, as the device would write them: <= 8 files of <= 16 MiB in $OUT,
    rebuilt here bit for bit, and loaded by the trained backend as IF-shaped 64-px and 128-px denoisers."""
    data = training_data.TrainingSet(small_data)
    trainers = {stage: Trainer(Settings(stage=stage, preset="device", batch=1), data) for stage in (1, 2)}
    for trainer in trainers.values():
        trainer.history = [{"step": 0, "loss": 1.0, "l_simple": 1.0, "l_vlb": 0.0}]
    folder = tmp_path / "device_weights"
    write_weights_folder(trainers, data, folder, "test")
    written = write_parts(folder, tmp_path / "OUT")
    assert len(written) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in written)
    assert len([p for p in written if p.name.startswith("stage_1-part")]) >= 2  # stage I is split
    shipped = unpack_parts(tmp_path / "OUT", tmp_path / "shipped")
    for name, digest in shipped["sha256"].items():
        assert training_data.sha256(tmp_path / "shipped" / name) == digest == training_data.sha256(folder / name)

    cascade = load_trained(tmp_path / "shipped", device="cpu", cache_dir=tmp_path / "embeds")
    assert (cascade.stage_1.sample_size, cascade.stage_2.denoiser.sample_size) == (64, 128)
    assert cascade.stage_1.unet.config.out_channels == cascade.stage_2.denoiser.unet.config.out_channels == 6

    weights = tmp_path / "shipped" / "stage_2" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    with pytest.raises(WeightsMissing, match="sha256"):
        load_trained(tmp_path / "shipped", device="cpu", cache_dir=tmp_path / "embeds")


def test_device_script_dry_run_and_the_backend_samples_a_figure_from_its_weights(small_data, tmp_path):
    script = ROOT / "scripts" / "device_train.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = tmp_path / "OUT"
    env = {**os.environ, "DEVICE_TRAIN_DRY": "1", "OUT": str(out), "WORK": str(tmp_path / "work"),
           "DATA": str(small_data), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TRAIN_FLAGS": "--sync-every 2"}
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "stage 1: 3 steps" in run.stdout and "stage 2: 2 steps" in run.stdout and "4.30 B" in run.stdout
    assert "| 2 | losses read every 25 steps |" in run.stdout  # bench/bench_train_step.py ran both stages
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "manifest.json", "stage_1-part0.safetensors",
                                                    "stage_2-part0.safetensors"]
    weights = tmp_path / "weights"
    shipped = unpack_parts(out, weights)
    assert shipped["data"]["sha256"] == training_data.sha256(small_data)
    assert "--preset micro" in shipped["command"] and shipped["stages"]["stage_1"]["steps"] == 3
    assert "--sync-every 2" in shipped["command"] and shipped["stages"]["stage_1"]["settings"]["sync_every"] == 2

    backend = {"name": "trained", "weights": str(weights), "device": "cpu", "cache_dir": str(tmp_path / "cache")}
    cascade = load_backend(backend)
    spec = {"technique": "sample", "prompt": "a photo of a cat", "count": 2, "seed": 100, "start": 990,
            "stride": 330, "guidance_scale": 7.0, "unconditional_prompt": "", "thresholding": True,
            "noise_level": 250}
    images = figures.make(figures.Context(cascade=cascade, name="trained_test", spec=spec))["images"]
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert not torch.equal(images[0], images[1])  # each image its own noise
    up = figures.make(figures.Context(cascade=cascade, name="trained_up", source={"images": images},
                                      spec={**spec, "technique": "upsample", "source": "trained_test",
                                            "source_technique": "sample"}))["images"]
    assert up.shape == (2, 3, 32, 32) and torch.isfinite(up).all()
    summary = backend_summary(cascade.description)  # what the post's intro says made its figures
    assert summary.startswith("the project's own") and "not DeepFloyd IF" in summary
    assert f"on {shipped['data']['count']} captioned" in summary
    assert summary.endswith("embedded by sentence-transformers/all-MiniLM-L6-v2")


# --- the workflow rules ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("npm") is None and not os.environ.get("CI"), reason="needs npm (emojibase-data)")
def test_data_and_train_rules_on_a_small_subset(tmp_path):
    from diffusion_post.project import copy_project

    copy_project(ROOT, tmp_path, ROOT / ".cache")
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["training"] = {"emoji_limit": 6, "crops_per_photo": 1, "preset": "micro", "steps_1": 2, "steps_2": 2,
                          "batch_1": 2, "batch_2": 2, "size_1": 16, "size_2": 32}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "train"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((tmp_path / "results" / "train" / f"data-v{DATA_VERSION}.json").read_text())
    assert manifest["count"] == 6 + len(training_data.PHOTOS) and manifest["keywords"] == training_data.EMOJIBASE
    with np.load(tmp_path / "results" / "train" / f"data-v{DATA_VERSION}.npz") as data:
        with_keywords = [str(b) for a, b in data["texts"][:6] if str(a) != str(b)]  # emojibase keywords added
        assert len(with_keywords) >= 4 and "banjo, music, stringed" in with_keywords
    shipped = json.loads((tmp_path / "weights" / "trained" / "SHIPPED.json").read_text())
    assert shipped["data"]["sha256"] == manifest["sha256"]
    assert "--steps-1 2" in shipped["command"] and (tmp_path / "weights" / "trained" / "loss.png").is_file()
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "train" not in dry.stdout.split("Job stats")[-1]  # not part of the default target

    # the workflow on the trained backend: a figure made from these weights, which are an input of its job
    config["backend"] = {**config["backend"], "name": "trained", "weights": "weights/trained", "device": "cpu"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "figures/cfg_samples.png"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    from diffusion_post.images import load_result

    _, parameters = load_result(tmp_path / "results" / "cfg_samples.safetensors")
    assert parameters["models"]["backend"] == "trained"
    (tmp_path / "weights" / "trained" / "stage_1" / "unet" / "diffusion_pytorch_model.safetensors").touch()
    shutil.rmtree(tmp_path / "results" / "train")  # as in a fresh clone: weights committed, no data, no checkpoints
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "figures/cfg_samples.png"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    jobs = dry.stdout.split("Job stats")[-1]
    assert "sample_sampling" in jobs, dry.stdout[-3000:]  # new weights: the figure is out of date
    assert "train" not in jobs and "data" not in jobs  # and sampling never trains
