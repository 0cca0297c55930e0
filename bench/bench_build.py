"""Full offline build of the post vs the sampling work inside it, and the rebuild after one prompt edit.

Prints, measured side by side in one run on a fresh copy of the project:
  dry run   - `snakemake -n` of the fresh copy (parse, config validation, DAG)
  sampling  - every figure's sampling (build.make_result) in one process: the model work the build contains
  in-build  - the same sampling as timed inside the full build by its own jobs (the SAMPLED_MESSAGE lines they log,
              model loads included): the overhead build / in-build sampling compares two times of ONE run, so the
              machine's run-to-run noise (below) cancels; build / separate sampling is printed too
  build     - `snakemake --cores 1`: figures, layout, post, `jekyll build`
  rebuild   - `snakemake --cores 1` after editing one prompt (the second prompt of the first anagram)
with wall and CPU seconds (user + system: on a shared machine the steadier of the two), and the overhead ratio
build / sampling. With --baseline REV, the same for the project at git revision REV (its own code: `git archive`),
measured in the same run, one project after the other.

Wall times on a 2-core virtual machine vary by up to a third from one run to the next even when it is idle, so with
--rounds N every measurement is repeated N times (each round a fresh copy of each project, the projects alternating)
and the table shows the best (smallest) of each, as `timeit` does; each overhead ratio is the median of the rounds'
own ratios, which are printed beside it.
"""

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffusion_post.backends import LOAD_MESSAGE
from diffusion_post.build import SAMPLED_MESSAGE
from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds and stderr of a command run with the project's own code (its src/)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd / "src")})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), run.stderr


# Every figure's make_result in one process; older code has no figure_backend (one backend for every figure).
SAMPLING = """
import sys, time
sys.path.insert(0, "src")
from diffusion_post import config as c
from diffusion_post.backends import load_backend
from diffusion_post.build import make_result, write_builtin_input
cfg = c.load("config.yaml")
backend_of = getattr(c, "figure_backend", lambda cfg, spec, results="results": cfg["backend"])
for key, value in cfg["inputs"].items():
    if value.startswith("builtin:"):
        write_builtin_input(value[8:], c.input_path(cfg, key, "inputs_tmp"))
specs = {name: c.resolve(cfg, name) for name in c.figure_table(cfg)}
t0 = time.perf_counter()
for denoiser in {spec.get("denoiser") for spec in specs.values()}:
    load_backend(backend_of(cfg, {"technique": "sample", "denoiser": denoiser}, "inputs_tmp"))
load = time.perf_counter() - t0
t0 = time.perf_counter()
for name, spec in specs.items():
    inputs = {"image": c.input_path(cfg, spec["image"], "inputs_tmp")} if "image" in spec else {}
    source = f"raw/{spec['source']}.safetensors" if "source" in spec else None
    make_result(name, spec, backend_of(cfg, spec, "inputs_tmp"), inputs, source, f"raw/{name}.safetensors")
print(load, time.perf_counter() - t0)
"""


def edit_one_prompt(config_path: Path) -> None:
    config = yaml.safe_load(config_path.read_text())
    anagram = next(spec for figures in config["figures"].values() for spec in figures.values() if spec["technique"] == "anagram")
    anagram["prompts"][1] = "a snowman"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def measure(root: Path, cache_dir: Path, sampling: bool = True, keep: Path | None = None) -> dict[str, float]:
    """The numbers of one project (its code at `root`), on a fresh copy."""
    nan = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copy_project(root, work, cache_dir)
        dry, _, _ = timed([sys.executable, "-m", "snakemake", "-n"], work)
        load = sample = nan
        if sampling:
            out = subprocess.run([sys.executable, "-c", SAMPLING], cwd=work, check=True, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(work / "src")}).stdout
            load, sample = map(float, out.split()[-2:])
        build, build_cpu, log = timed([sys.executable, "-m", "snakemake", "--cores", "1"], work)
        if keep:
            for folder in ("figures", "site/_posts"):
                shutil.copytree(work / folder, keep / folder, dirs_exist_ok=True)
        edit_one_prompt(work / "config.yaml")
        rebuild, rebuild_cpu, _ = timed([sys.executable, "-m", "snakemake", "--cores", "1"], work)
    loads = log.count(LOAD_MESSAGE) if LOAD_MESSAGE in log else nan  # older code logs no loads
    timed_jobs = re.findall(rf"^{SAMPLED_MESSAGE} \S+ in ([\d.]+) s$", log, re.M)
    in_build = sum(map(float, timed_jobs)) if timed_jobs else nan  # older code logs no times
    return {"dry": dry, "load": load, "sampling": sample, "in_build": in_build, "build": build, "build_cpu": build_cpu,
            "rebuild": rebuild, "rebuild_cpu": rebuild_cpu, "loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache"), help="backend caches (emoji set, prompt embeddings), prepared once")
    parser.add_argument("--baseline", metavar="REV", help="also measure the project at this git revision, in the same run")
    parser.add_argument("--no-sampling", action="store_true", help="skip the separate sampling run (build and rebuild only)")
    parser.add_argument("--keep", type=Path, help="copy this tree's built figures/ and site/_posts/ here, to look at them")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every measurement this many times: the table shows the best of each, the ratios their median")
    args = parser.parse_args()
    rounds = {}  # project -> one dict of numbers per round
    with tempfile.TemporaryDirectory() as tmp:
        projects = {"this tree": ROOT}
        if args.baseline:
            old = Path(tmp) / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            projects = {args.baseline: old, **projects}
        for _ in range(args.rounds):
            for name, root in projects.items():
                keep = args.keep if root == ROOT else None
                rounds.setdefault(name, []).append(measure(root, Path(args.cache_dir), not args.no_sampling, keep))
    columns = {name: {key: min(r[key] for r in runs) for key in runs[0]} for name, runs in rounds.items()}
    rows = [("snakemake -n (fresh copy)", "dry"), ("model load (once, in the sampling process)", "load"),
            ("sampling: every figure, one process", "sampling"),
            ("sampling inside the build (its jobs, loads incl.)", "in_build"), ("full build: snakemake --cores 1", "build"),
            ("  CPU seconds of the full build", "build_cpu"), ("rebuild after one prompt edit", "rebuild"),
            ("  CPU seconds of the rebuild", "rebuild_cpu"), ("model loads logged by the full build", "loads")]
    print(f"{'what (seconds)':<44}" + "".join(f"{name:>14}" for name in columns))
    for label, key in rows:
        print(f"{label:<44}" + "".join(f"{c[key]:14.1f}" for c in columns.values()))
    for name, c in columns.items():
        for what, sampling in (("build / in-build sampling", lambda r: r["in_build"]),
                               ("build / (load + separate sampling)", lambda r: r["load"] + r["sampling"])):
            ratios = [r["build"] / sampling(r) for r in rounds[name]]
            each = f"; each round: {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""
            print(f"{name}: overhead {what} = {statistics.median(ratios):.2f}  (target <= 1.25){each}")


if __name__ == "__main__":
    main()
