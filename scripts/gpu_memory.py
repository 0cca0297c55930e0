"""Peak GPU memory of a cold-cache build, measured: full-size random-weight T5-XXL, IF-I-L / IF-I-XL and IF-II-L
(weights do not change memory), written in the hub layout and run through the code the workflow's jobs call:
encode_prompt for every prompt, then make_result for a CFG sample, a 3-view anagram (UNet batch 6) and its stage-II
upsampling. Each setup runs in a fresh process; torch.cuda.max_memory_allocated is read after each phase, beside
README's estimate (diffusion_post.full_size).

    python scripts/gpu_memory.py --out DIR              # on a CUDA GPU (~25 GB of disk for the random weights)
    python scripts/gpu_memory.py --tiny --out DIR       # the same path with the tiny models on the CPU (the tests)
    python scripts/gpu_memory.py --dry-run              # what it would build, with parameter counts; no weights
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SETUPS = [("IF-I-L", "IF-II-L"), ("IF-I-XL", "IF-II-L")]
PROMPTS = ["a photo of a cat", "an oil painting of a snowy mountain village", "a lithograph of a skull"]
BASE = {"seed": 100, "start": 990, "stride": 330, "guidance_scale": 7.0, "unconditional_prompt": "",
        "thresholding": True, "noise_level": 250, "count": 1}
FIGURES = [  # (name, spec, source): the largest UNet batches of the post (3 views x CFG), in both stages
    ("cats", {**BASE, "technique": "sample", "prompt": PROMPTS[0]}, None),
    ("anagram", {**BASE, "technique": "anagram", "prompts": PROMPTS, "views": ["identity", "rotate_cw", "rotate_ccw"]}, None),
    ("anagram_stage_2", {**BASE, "technique": "upsample", "source": "anagram", "source_technique": "anagram",
                         "prompts": PROMPTS, "views": ["identity", "rotate_cw", "rotate_ccw"], "stride": 495}, "anagram"),
]
LOG_LINE = re.compile(r"^diffusion-post: (loading (?:text encoder|backend|stage_[12] UNet)|released text encoder)", re.M)


def random_weights(model, dtype):
    """Normal(0, 0.02) weights, norms at 1 and biases at 0, made where the model is (fast on a GPU)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.to(dtype)


def write_full_size(folder: Path, stage_1: str, stage_2: str, device: str, build=None) -> tuple[Path, Path]:
    """stage_1/ (unet, scheduler, text_encoder, tokenizer) and stage_2/ (unet, scheduler, image_noising_scheduler)
    with random weights, saved as fp16 files (variant fp16, as the hub's), unless already there. `build(arch,
    device)` makes each model (default: full_size.build, the full-size configs)."""
    import torch

    from diffusion_post import full_size
    from diffusion_post.backends.tiny import offline_tokenizer
    from diffusion_post.training.models import if_scheduler, image_noising_scheduler

    build = build or full_size.build

    parts = {folder / "text_encoder": "T5-XXL", folder / stage_1 / "unet": stage_1, folder / stage_2 / "unet": stage_2}
    for target, arch in parts.items():
        if not (target / "config.json").exists():
            model = random_weights(build(arch, "meta").to_empty(device=device), torch.float16)
            model.save_pretrained(target, variant="fp16")
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    for stage, name in [(1, stage_1), (2, stage_2)]:
        if_scheduler(stage).save_pretrained(folder / name / "scheduler")
    image_noising_scheduler().save_pretrained(folder / stage_2 / "image_noising_scheduler")
    text_encoder = folder / stage_1 / "text_encoder"  # stage I's repository carries T5 and its tokenizer
    if not text_encoder.exists():
        text_encoder.symlink_to(folder / "text_encoder")
    offline_tokenizer().save_pretrained(folder / stage_1 / "tokenizer")
    return folder / stage_1, folder / stage_2


def measure(stage_1: str, stage_2: str, device: str, cache: str) -> dict:
    """One cold-cache build in this process: peak memory of the encoding phase, what is left once T5 is released,
    and the peak of the sampling phase."""
    import torch

    from diffusion_post import backends
    from diffusion_post.build import encode_prompt, make_result
    from diffusion_post.spec import encoded_prompts, prompt_digest

    cuda = device.startswith("cuda")
    backend = {"name": "deepfloyd", "stage_1": stage_1, "stage_2": stage_2, "device": device, "cache_dir": cache}
    out = Path(cache) / "results"

    def gib(value: int) -> float:
        return round(value / 2**30, 3)

    result, start = {"device": torch.cuda.get_device_name() if cuda else "cpu"}, time.perf_counter()
    prompts = list(dict.fromkeys(p for _, spec, _ in FIGURES for p in encoded_prompts(spec)))
    for prompt in prompts:
        encode_prompt(prompt, backend, str(out / "prompt_embeds" / f"{prompt_digest(prompt)}.json"))
    if cuda:
        result["encode_peak_gib"] = gib(torch.cuda.max_memory_allocated())
    backends.release_text_encoders()  # what load_backend does before the first UNet loads
    if cuda:
        result["after_release_gib"] = gib(torch.cuda.memory_allocated())
        torch.cuda.reset_peak_memory_stats()
    for name, spec, source in FIGURES:
        make_result(name, spec, backend, {}, str(out / f"{source}.safetensors") if source else None,
                    str(out / f"{name}.safetensors"))
    if cuda:
        result["sample_peak_gib"] = gib(torch.cuda.max_memory_allocated())
        result["sample_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_setup(stage_1: Path, stage_2: Path, device: str, work: Path) -> dict:
    """measure() in a fresh process (empty caches, a clean CUDA allocator); its model loads in order, from its log."""
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    run = subprocess.run([sys.executable, __file__, "--measure", str(stage_1), str(stage_2), "--device", device,
                          "--cache", str(cache)], capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "loads": LOG_LINE.findall(run.stderr)}


def estimates(stage_1: str, stage_2: str) -> dict:
    from diffusion_post.full_size import Setup, estimate

    return {key: round(value, 2) for key, value in estimate(Setup(stage_1, stage_2, "auto"), {1: 6, 2: 6}).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_memory.json (default: print only)")
    parser.add_argument("--tiny", action="store_true", help="the tiny models on the CPU: the same code path, no GPU")
    parser.add_argument("--dry-run", action="store_true", help="print the setups, parameter counts and estimates only")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "diffusion_post_gpu_memory")
    parser.add_argument("--measure", nargs=2, metavar=("STAGE_1", "STAGE_2"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(measure(*args.measure, args.device, args.cache)))
        return 0
    if args.dry_run:
        from diffusion_post.full_size import build

        for arch in ("T5-XXL", *dict.fromkeys(a for setup in SETUPS for a in setup)):
            print(f"{arch}: {sum(p.numel() for p in build(arch).parameters()) / 1e9:.2f} B parameters (random fp16 weights)")
        for stage_1, stage_2 in SETUPS:
            print(f"{stage_1} + {stage_2}: estimated GiB {estimates(stage_1, stage_2)}")
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from diffusion_post.backends.tiny import make_tiny_if

        folders = {("tiny", "tiny"): make_tiny_if(args.work / "tiny")}
        device = "cpu"
    else:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA GPU: run with --tiny (CPU) or --dry-run")
        device = "cuda"
        folders = {setup: write_full_size(args.work / "full_size", *setup, device) for setup in SETUPS}
    report = []
    for (stage_1, stage_2), (folder_1, folder_2) in folders.items():
        measured = run_setup(folder_1, folder_2, device, args.work)
        row = {"setup": f"{stage_1} + {stage_2}", "measured": measured}
        if not args.tiny:
            row["estimated"] = estimates(stage_1, stage_2)
        report.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_memory.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all("error" not in row["measured"] for row in report) else 1


if __name__ == "__main__":
    sys.exit(main())
