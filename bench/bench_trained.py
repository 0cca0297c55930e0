"""CPU seconds per figure: the trained backend's architecture beside the ideal backend, in one process.

The trained backend's UNets get random weights here (its speed does not depend on them; no weights are shipped
yet), written in the shipped layout and loaded through `backends.load_backend`, as a build would. Each figure of
config.yaml is sampled by `build.make_result` on both backends, alternating, best of N.

    python bench/bench_trained.py [--figures setup_stage_1 setup_stage_2 cfg_samples] [--repeats 1]
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from diffusion_post import config as post_config
from diffusion_post.backends import load_backend
from diffusion_post.build import make_result
from diffusion_post.images import load_result
from diffusion_post.training.models import make_unet
from diffusion_post.training.ship import save_stage, write_shipped

ROOT = Path(__file__).resolve().parents[1]


def random_trained_weights(folder: Path) -> Path:
    torch.manual_seed(0)
    for stage in (1, 2):
        save_stage(make_unet(stage, "device"), stage, folder)
    write_shipped(folder, {"command": "bench/bench_trained.py: random weights", "data": {"version": None, "count": 0}})
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", nargs="+", default=["setup_stage_1", "setup_stage_2", "cfg_samples"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    args = parser.parse_args(argv)
    config = post_config.load(args.config)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backends = {"trained (random weights)": {"name": "trained", "weights": str(random_trained_weights(tmp / "w")),
                                                 "device": "cpu", "cache_dir": str(ROOT / ".cache")},
                    "ideal": {**config["backend"], "name": "ideal"}}
        for backend in backends.values():
            load_backend(backend)  # loads (and caches) outside the timed runs
        times = {(b, f): [] for b in backends for f in args.figures}
        for _ in range(args.repeats):
            for figure in args.figures:
                spec = post_config.resolve(config, figure)
                inputs = {"image": str(ROOT / post_config.input_path(config, spec["image"]))} if "image" in spec else {}
                for name, backend in backends.items():
                    source = None
                    if "source" in spec:  # stage II starts from this backend's own stage-I result
                        source = tmp / f"{name}-{spec['source']}.safetensors"
                        if not source.exists():
                            make_result(spec["source"], post_config.resolve(config, spec["source"]), backend, inputs,
                                        None, str(source))
                    start = time.perf_counter()
                    out = tmp / f"{name}-{figure}.safetensors"
                    make_result(figure, spec, backend, inputs, str(source) if source else None, str(out))
                    times[name, figure].append(time.perf_counter() - start)
                    assert load_result(out)[1]["models"]["backend"] == backend["name"]
                    print(f"{figure} on {name}: {times[name, figure][-1]:.1f} s", flush=True)

    print(f"CPU [{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads], "
          f"torch {torch.__version__}, best of {args.repeats}")
    names = list(backends)
    print(f"| figure | {' | '.join(names)} | ratio trained/ideal |")
    print("|---|" + "---|" * (len(names) + 1))
    for figure in args.figures:
        best = [min(times[n, figure]) for n in names]
        print(f"| {figure} | {' | '.join(f'{b:.1f} s' for b in best)} | {best[0] / best[1]:.1f} |")


if __name__ == "__main__":
    main()
