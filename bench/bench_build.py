"""Full offline build of the post vs the sampling work inside it, and the rebuild after one prompt edit.

Prints, measured side by side in one run on a fresh copy of the project:
  dry run   - `snakemake -n` of the fresh copy (parse, config validation, DAG)
  sampling  - every figure's sampling (build.make_result) in one process: the model work the build contains
  build     - `snakemake --cores 1`: figures, layout, post, `jekyll build`
  rebuild   - `snakemake --cores 1` after editing one prompt
and the overhead ratio build / sampling. With --baseline REV, the same for the project at git revision REV
(its own code: `git archive`), measured in the same run, one project after the other.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffusion_post.backends import LOAD_MESSAGE
from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds, and stderr, of a command run with the project's own code."""
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd / "src")})
    return time.perf_counter() - start, run.stderr


SAMPLING = """
import sys, time
sys.path.insert(0, "src")
from diffusion_post import config as c
from diffusion_post.backends import load_backend
from diffusion_post.build import make_result, write_builtin_input
cfg = c.load("config.yaml")
t0 = time.perf_counter(); load_backend(cfg["backend"]); load = time.perf_counter() - t0
for key, value in cfg["inputs"].items():
    if value.startswith("builtin:"):
        write_builtin_input(value[8:], c.input_path(cfg, key, "inputs_tmp"))
t0 = time.perf_counter()
for name in c.figure_table(cfg):
    spec = c.resolve(cfg, name)
    inputs = {"image": c.input_path(cfg, spec["image"], "inputs_tmp")} if "image" in spec else {}
    source = f"raw/{spec['source']}.safetensors" if "source" in spec else None
    make_result(name, spec, cfg["backend"], inputs, source, f"raw/{name}.safetensors")
print(load, time.perf_counter() - t0)
"""


def measure(root: Path, cache_dir: Path) -> dict[str, float]:
    """The numbers of one project (its code at `root`), on a fresh copy."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copy_project(root, work, cache_dir)
        dry, _ = timed([sys.executable, "-m", "snakemake", "-n"], work)
        out = subprocess.run([sys.executable, "-c", SAMPLING], cwd=work, check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(work / "src")}).stdout
        load, sampling = map(float, out.split()[-2:])
        build, log = timed([sys.executable, "-m", "snakemake", "--cores", "1"], work)
        config = yaml.safe_load((work / "config.yaml").read_text())
        config["figures"]["anagrams"]["anagram_citadel_castle"]["prompts"][1] = "a snowman"
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        rebuild, _ = timed([sys.executable, "-m", "snakemake", "--cores", "1"], work)
    loads = log.count(LOAD_MESSAGE) if LOAD_MESSAGE in log else float("nan")  # older code logs no loads
    return {"dry": dry, "load": load, "sampling": sampling, "build": build, "rebuild": rebuild, "loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache"), help="backend caches (emoji set, prompt embeddings), prepared once")
    parser.add_argument("--baseline", metavar="REV", help="also measure the project at this git revision, in the same run")
    args = parser.parse_args()
    columns = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            old = Path(tmp) / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            columns[args.baseline] = measure(old, Path(args.cache_dir))
        columns["this tree"] = measure(ROOT, Path(args.cache_dir))
    rows = [("snakemake -n (fresh copy)", "dry"), ("model load (once, in the sampling process)", "load"),
            ("sampling: every figure, one process", "sampling"), ("full build: snakemake --cores 1", "build"),
            ("rebuild after one prompt edit", "rebuild"), ("model loads logged by the full build", "loads")]
    print(f"{'what':<44}" + "".join(f"{name:>14}" for name in columns))
    for label, key in rows:
        print(f"{label:<44}" + "".join(f"{c[key]:14.1f}" for c in columns.values()))
    for name, c in columns.items():
        print(f"{name}: overhead build / (load + sampling) = {c['build'] / (c['load'] + c['sampling']):.2f}  (target <= 1.25)")


if __name__ == "__main__":
    main()
