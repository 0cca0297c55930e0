"""What the reproducibility contract costs and what the hardware keeps, measured side by side in one process.

(1) Cost: a `sample` figure of `count` images made one image per denoiser call (figures.sample, what the project
    does) against all images in one batch (the earlier code: techniques.sample_from_noise with every generator);
    ratio per-image/batched. Runs alternate (one warm-up each, best of N).
(2) Bits: image 0 of a figure with count 1 against image 0 with count N, per-image and batched; the same figure
    with 1 and with 2 intra-op threads; and two figures made at once in two Python threads of one process (what
    `snakemake --cores 2` does with the profile's force-use-threads) against the same figures made one after the
    other.

    python bench/bench_reproducibility.py [--backend tiny|ideal] [--count 5] [--stride 30] [--repeats 3]
"""

import argparse
import platform
import tempfile
import threading
import time

import torch

from diffusion_post import figures, techniques
from diffusion_post.backends import load_backend

PROMPT = "a high quality photo"


def spec(count: int, stride: int) -> dict:
    return {"technique": "sample", "prompt": PROMPT, "count": count, "seed": 100, "start": 990, "stride": stride,
            "guidance_scale": 7.0, "unconditional_prompt": "", "thresholding": False}


def per_image(cascade, name: str, s: dict) -> torch.Tensor:
    return figures.make(figures.Context(cascade=cascade, name=name, spec=s))["images"]


def batched(cascade, name: str, s: dict) -> torch.Tensor:
    ctx = figures.Context(cascade=cascade, name=name, spec=s)
    size = cascade.stage_1.sample_size
    return techniques.sample_from_noise(figures.guide(ctx)(cascade.stage_1), (3, size, size), figures.timesteps(s),
                                        cascade.stage_1.alphas_cumprod, ctx.generators(s["count"]))


def best_times(runs: dict, repeats: int) -> dict[str, float]:
    for fn in runs.values():
        fn()  # warm-up
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tiny", choices=["tiny", "ideal"])
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--stride", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=None, help="backend caches (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        cascade = load_backend({"name": args.backend, "cache_dir": args.cache_dir or tmp, "device": "cpu",
                                **({"include_inputs": False} if args.backend == "ideal" else {})})
        many, one = spec(args.count, args.stride), spec(1, args.stride)
        threads = torch.get_num_threads()
        print(f"backend {args.backend} ({cascade.stage_1.sample_size} px), {len(figures.timesteps(many))} steps, "
              f"CFG 7, count {args.count}, cpu [{platform.processor() or platform.machine()}, {threads} threads], "
              f"torch {torch.__version__}, best of {args.repeats}")

        times = best_times({"per-image": lambda: per_image(cascade, "fig", many),
                            "batched": lambda: batched(cascade, "fig", many)}, args.repeats)
        print("| run | best s | s/image |\n|---|---|---|")
        for name, t in times.items():
            print(f"| {name} ({args.count} images) | {t:.3f} | {t / args.count:.3f} |")
        print(f"ratio per-image/batched = {times['per-image'] / times['batched']:.3f}")

        def compare(label: str, a: torch.Tensor, b: torch.Tensor) -> None:
            print(f"{label}: {'bit-identical' if torch.equal(a, b) else 'DIFFERENT'} "
                  f"(max |diff| {(a - b).abs().max().item():.1e})")

        alone = per_image(cascade, "fig", one)
        compare(f"image 0, count 1 vs count {args.count}, per-image calls", alone, per_image(cascade, "fig", many)[:1])
        compare(f"image 0, count 1 vs count {args.count}, batched", batched(cascade, "fig", one),
                batched(cascade, "fig", many)[:1])

        other_threads = 1 if threads > 1 else 2
        torch.set_num_threads(other_threads)
        compare(f"figure with {threads} vs {other_threads} intra-op threads", alone, per_image(cascade, "fig", one))
        torch.set_num_threads(threads)

        sequential = {name: per_image(cascade, name, many) for name in ("fig_a", "fig_b")}
        concurrent = {}
        jobs = [threading.Thread(target=lambda n=name: concurrent.__setitem__(n, per_image(cascade, n, many)))
                for name in sequential]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
        for name in sequential:
            compare(f"{name} made beside another figure in a second thread vs alone", sequential[name], concurrent[name])


if __name__ == "__main__":
    main()
