"""Benchmark of the sampling core, measured side by side in one process.

(1) Our strided CFG loop (sampling.sample + guidance.classifier_free) vs diffusers' IFPipeline with the same UNet,
    the same timesteps and the same generators; ratio ours/pipeline (target <= 1.0).
(2) A 3-view visual anagram as ONE batched UNet call per step (guidance.anagram) vs the naive alternative, one CFG
    call per view; ratio batched/sequential (target < 1).

CPU:  python bench/bench_sampling.py                       (tiny random IF stage I at 64 px, fp32)
H200: python bench/bench_sampling.py --device cuda --arch IF-I-XL [--compile]
      (full-size UNet2DConditionModel configs with random weights in fp16: speed does not depend on the weights)
Check the full-size configs without a GPU: python bench/bench_sampling.py --arch IF-I-XL --count-params
"""

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from diffusion_post import guidance, techniques
from diffusion_post.backends.deepfloyd import IFDenoiser, load_cascade
from diffusion_post.backends.tiny import make_tiny_if
from diffusion_post.full_size import build as build_full_size, stage_1_config
from diffusion_post.randomness import image_generators, image_seed
from diffusion_post.sampling import Thresholding
from diffusion_post.schedule import strided_timesteps
from diffusion_post.views import get_view

VIEWS = ("identity", "flip", "rotate_cw")


def if_scheduler(max_value: float = 1.5):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                         prediction_type="epsilon", thresholding=True, dynamic_thresholding_ratio=0.95,
                         sample_max_value=max_value, clip_sample=True)


class TensorTimestep(torch.nn.Module):
    """Hands the UNet a 0-d tensor timestep, as IFPipeline does, so that a compiled UNet sees one graph for every
    step instead of specializing (and recompiling) on each Python-int timestep our denoiser passes."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.config = unet, unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def forward(self, sample, timestep, **kwargs):
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep, device=sample.device)
        return self.unet(sample, timestep, **kwargs)


def build(args, workdir: Path):
    """-> (denoiser, scheduler for the pipeline, embeddings of 3 prompts (3, 77, D), unconditional (1, 77, D), size)."""
    device = torch.device(args.device)
    if args.arch == "tiny":
        from diffusers import DDPMScheduler

        stage_1, _ = make_tiny_if(workdir / "tiny_if", seed=0, stage_1_size=64, stage_2_size=64)
        cascade = load_cascade(str(stage_1), None, device=args.device, cache_dir=workdir / "prompt_embeds", backend="tiny")
        prompts = ["a high quality photo", "an oil painting of a snowy mountain village", "a photo of a dog", ""]
        embeds = cascade.embed(prompts)
        denoiser, scheduler = cascade.stage_1, DDPMScheduler.from_pretrained(stage_1, subfolder="scheduler")
        conds, uncond = embeds[:3], embeds[3:]
    else:
        from diffusers import UNet2DConditionModel

        dtype = torch.float16 if device.type == "cuda" else torch.float32
        with torch.device(device):
            unet = UNet2DConditionModel(**stage_1_config(args.arch))
        unet = unet.to(dtype).eval().requires_grad_(False)
        scheduler = if_scheduler()
        denoiser = IFDenoiser(unet, scheduler.alphas_cumprod, prompts=None, description={"stage_1": f"random {args.arch}"})
        g = torch.Generator().manual_seed(0)
        embeds = torch.randn((4, 77, 4096), generator=g).to(device, dtype)  # T5-XXL-shaped stand-ins
        conds, uncond = embeds[:3], embeds[3:]
    if args.compile:
        denoiser.unet = TensorTimestep(torch.compile(denoiser.unet, dynamic=False))  # one graph per batch size
    return denoiser, scheduler, conds, uncond, denoiser.sample_size


def sequential_anagram(denoiser, views, conds, uncond, scale) -> Callable:
    """The naive anagram: one CFG call per view, then the same inverse views and mean."""
    per_view = [guidance.classifier_free(denoiser, conds[k:k + 1], uncond, scale) for k in range(len(views))]

    def model(x, t):
        return torch.stack([view.inverse_view(m(view.view(x), t)) for view, m in zip(views, per_view)]).mean(dim=0)

    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def side_by_side(runs: dict[str, Callable[[], torch.Tensor]], repeats: int, device: torch.device) -> dict[str, dict]:
    """One warm-up each, then `repeats` rounds that alternate the runs (so load changes hit all alike); best of N."""
    results = {name: {"times": [], "out": fn()} for name, fn in runs.items()}  # warm-up (and compilation)
    for _ in range(repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            results[name]["out"] = fn()
            sync(device)
            results[name]["times"].append(time.perf_counter() - start)
            results[name]["peak_mb"] = peak_memory_mb(device)
    return results


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    """How far two outputs are apart: the largest and mean absolute difference, and non-finite values in either."""
    diff = (a.float() - b.float()).abs()
    bad = [int((~x.isfinite()).sum()) for x in (a, b)]
    return f"max |a - b| = {diff.max().item():.1e}, mean {diff.mean().item():.1e}, non-finite {bad[0]} / {bad[1]}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--arch", default="tiny", choices=["tiny", "IF-I-L", "IF-I-XL"])
    parser.add_argument("--images", type=int, default=1, help="images per call (UNet batch = 2 x images with CFG)")
    parser.add_argument("--stride", type=int, default=30, help="timesteps 990, 990 - stride, ..., 0")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best of N)")
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (both sides use it)")
    parser.add_argument("--count-params", action="store_true", help="build --arch on the meta device, print its size, exit")
    args = parser.parse_args(argv)

    if args.count_params:  # IF-I-XL: the published config; IF-I-L: ASSUMED (see diffusion_post.full_size)
        if args.arch != "tiny":
            unet = build_full_size(args.arch)
            print(f"{args.arch}: {sum(p.numel() for p in unet.parameters()) / 1e9:.2f} B UNet parameters")
        return
    device = torch.device(args.device)
    if args.arch != "tiny" and device.type != "cuda":
        parser.error(f"--arch {args.arch} builds a multi-GB random UNet: run it with --device cuda (or use --arch tiny)")

    from diffusers import IFPipeline

    with tempfile.TemporaryDirectory() as tmp:
        denoiser, scheduler, conds, uncond, size = build(args, Path(tmp))
        timesteps = strided_timesteps(990, args.stride)
        n = args.images
        alphas_cumprod = denoiser.alphas_cumprod
        threshold = Thresholding(0.95, 1.5)

        def generators(name):
            return image_generators(0, name, n)

        def ours():
            model = guidance.classifier_free(denoiser, conds[:1], uncond, args.guidance)
            return techniques.sample_from_noise(model, (3, size, size), timesteps, alphas_cumprod, generators("bench"),
                                                device=device, thresholding=threshold)

        pipe = IFPipeline(unet=denoiser.unet.unet if args.compile else denoiser.unet, scheduler=scheduler,
                          tokenizer=None, text_encoder=None, safety_checker=None, feature_extractor=None,
                          watermarker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def pipeline():
            return pipe(prompt_embeds=conds[:1].expand(n, -1, -1), negative_prompt_embeds=uncond.expand(n, -1, -1),
                        timesteps=timesteps, guidance_scale=args.guidance, output_type="pt",
                        generator=[torch.Generator().manual_seed(image_seed(0, "bench", i)) for i in range(n)]).images

        views = [get_view(name) for name in VIEWS]

        def anagram(make_model):
            def run():
                model = make_model(denoiser, views, conds, uncond, args.guidance)
                return techniques.sample_from_noise(model, (3, size, size), timesteps, alphas_cumprod, generators("anagram"),
                                                    device=device, thresholding=threshold)
            return run

        loop = side_by_side({"ours: strided CFG loop": ours, "diffusers IFPipeline": pipeline}, args.repeats, device)
        views_runs = side_by_side({"anagram, 3 views batched": anagram(guidance.anagram),
                                   "anagram, 3 views sequential": anagram(sequential_anagram)}, args.repeats, device)

    steps = len(timesteps)
    dtype = str(denoiser.unet.dtype).removeprefix("torch.")
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"arch {args.arch} ({size} px), {steps} steps (stride {args.stride}), CFG {args.guidance:g}, {n} image(s) per call, "
          f"device {args.device} [{hardware}], {dtype}, compile={args.compile}, best of {args.repeats}")
    memory = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB (process)"
    print(f"| run | UNet batch | best s | s/step | images/s | {memory} |")
    print("|---|---|---|---|---|---|")
    for results, batch in [(loop, 2 * n), (views_runs, None)]:
        for name, r in results.items():
            best = min(r["times"])
            rows = batch or (2 * len(VIEWS) * n if "batched" in name else f"{len(VIEWS)} x {2 * n}")
            print(f"| {name} | {rows} | {best:.3f} | {best / steps:.4f} | {n / best:.2f} | {r['peak_mb']:.0f} |")
    ours_s, pipeline_s = (min(r["times"]) for r in loop.values())
    batched_s, sequential_s = (min(r["times"]) for r in views_runs.values())
    ours_out, pipeline_out = (r["out"] for r in loop.values())
    batched, sequential = (r["out"] for r in views_runs.values())
    print(f"ratio ours/pipeline = {ours_s / pipeline_s:.3f} (target <= 1.0); ours vs pipeline: "
          f"{agreement(ours_out, pipeline_out)}")
    print(f"ratio batched/sequential = {batched_s / sequential_s:.3f} (target < 1); batched vs sequential: "
          f"{agreement(batched, sequential)}")


if __name__ == "__main__":
    main()
