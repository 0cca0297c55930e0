"""Full offline build of the post vs the sampling work inside it, and the rebuild after one prompt edit.

Prints, measured side by side in one run on a fresh copy of the project:
  sampling  - every figure's sampling (build.make_result) in one process: the model work the build contains
  build     - `snakemake --cores 1`: figures, layout, post, `jekyll build`
  rebuild   - `snakemake --cores 1` after editing one prompt
and the overhead ratio build / sampling.
"""

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of the command: on a shared machine the CPU
    time is the steadier of the two."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


SAMPLING = """
import sys, time
sys.path.insert(0, "src")
from diffusion_post import config as c
from diffusion_post.backends import load_backend
from diffusion_post.build import make_result, write_builtin_input
cfg = c.load("config.yaml")
for key, value in cfg["inputs"].items():
    if value.startswith("builtin:"):
        write_builtin_input(value[8:], c.input_path(cfg, key, "inputs_tmp"))
t0 = time.perf_counter()
for spec in {c.resolve(cfg, n).get("denoiser") for n in c.figure_table(cfg)}:
    load_backend(c.figure_backend(cfg, {"technique": "sample", "denoiser": spec}, "inputs_tmp"))
load = time.perf_counter() - t0
t0 = time.perf_counter()
for name in c.figure_table(cfg):
    spec = c.resolve(cfg, name)
    inputs = {"image": c.input_path(cfg, spec["image"], "inputs_tmp")} if "image" in spec else {}
    source = f"raw/{spec['source']}.safetensors" if "source" in spec else None
    make_result(name, spec, c.figure_backend(cfg, spec, "inputs_tmp"), inputs, source, f"raw/{name}.safetensors")
print(load, time.perf_counter() - t0)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache"), help="backend caches (emoji set, prompt embeddings), prepared once")
    parser.add_argument("--no-sampling", action="store_true", help="skip the separate sampling run (build and rebuild only)")
    parser.add_argument("--keep", help="copy the built figures/ and site/_posts/ into this folder, to look at them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copy_project(ROOT, work, Path(args.cache_dir))
        if not args.no_sampling:
            out = subprocess.run([sys.executable, "-c", SAMPLING], cwd=work, check=True, capture_output=True, text=True).stdout
            load, sampling = map(float, out.split()[-2:])
        build, build_cpu = timed([sys.executable, "-m", "snakemake", "--cores", "1"], work)
        if args.keep:
            for folder in ("figures", "site/_posts"):
                shutil.copytree(work / folder, Path(args.keep) / folder, dirs_exist_ok=True)
        config = yaml.safe_load((work / "config.yaml").read_text())
        config["figures"]["anagrams"]["anagram_citadel_castle"]["prompts"][1] = "a snowman"
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        rebuild, rebuild_cpu = timed([sys.executable, "-m", "snakemake", "--cores", "1"], work)
    print(f"{'what':<44}{'seconds':>9}{'CPU s':>9}")
    if not args.no_sampling:
        print(f"{'model load (once, in the sampling process)':<44}{load:9.1f}")
        print(f"{'sampling: every figure, one process':<44}{sampling:9.1f}")
    print(f"{'full build: snakemake --cores 1':<44}{build:9.1f}{build_cpu:9.1f}")
    print(f"{'rebuild after one prompt edit':<44}{rebuild:9.1f}{rebuild_cpu:9.1f}")
    if not args.no_sampling:
        print(f"overhead: build / (load + sampling) = {build / (load + sampling):.2f}  (target <= 1.25)")


if __name__ == "__main__":
    main()
