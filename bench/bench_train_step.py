"""Training speed of the trained backend's stages, side by side in one process: the losses read back from the
device at every step (the loop waits for the GPU each time) or every 25 steps, and the UNet eager or compiled.

H200: python bench/bench_train_step.py --device cuda      (device preset, batch 256 / 128; ~3 min with compilation)
CPU:  python bench/bench_train_step.py --preset micro --batch 4 4 --steps 2 --rounds 1 --no-compile   (the path only)

Each variant trains its own copy from the same seed: `--warmup` steps (compilation happens there), then `--rounds`
rounds of `--steps` steps, the variants alternating; best round. Speed does not depend on the weights' values.
"""

import argparse
import time

import torch

from diffusion_post.training.data import TrainingSet
from diffusion_post.training.train import Settings, Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(trainer: Trainer, steps: int) -> float:
    """Seconds for `steps` training steps (each variant reads its losses back as its settings say), all read back."""
    sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    trainer.read_losses()
    sync(trainer.device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results/train/data-v2.npz")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="device", choices=["device", "micro"])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs=2, default=[256, 128], help="stage I and stage II batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled variant")
    args = parser.parse_args(argv)

    variants = {"losses read at every step": {"sync_every": 1}, "losses read every 25 steps": {"sync_every": 25}}
    if not args.no_compile:
        variants["every 25 steps, compiled UNet"] = {"sync_every": 25, "compile": True}
    data = TrainingSet(args.data, args.device)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, preset {args.preset}, {args.steps} steps per round, best of {args.rounds}")
    print(f"| stage | variant | s/step | images/s | time / the first's (< 1: faster) | {args.warmup} warm-up steps, s |")
    print("|---|---|---|---|---|---|")
    for stage in args.stages:
        batch = args.batch[stage - 1]
        trainers, warmup = {}, {}
        for label, options in variants.items():
            trainer = trainers[label] = Trainer(Settings(stage=stage, preset=args.preset, batch=batch,
                                                         device=args.device, seed=stage, **options), data)
            warmup[label] = timed_steps(trainer, args.warmup)  # compilation happens here
        times = {label: [] for label in variants}
        for r in range(args.rounds):
            for label in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                times[label].append(timed_steps(trainers[label], args.steps))
        first = min(next(iter(times.values())))
        for label, seconds in times.items():
            best = min(seconds)
            print(f"| {stage} | {label} | {best / args.steps:.4f} | {batch * args.steps / best:.0f} | "
                  f"{best / first:.3f} | {warmup[label]:.1f} |", flush=True)
        del trainers, trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
