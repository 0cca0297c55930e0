"""Where the seconds of a build go: a cold and a warm `snakemake --cores 1` of a fresh copy, sampled by py-spy.

  cold  the backend's caches empty (emoji set, photo crops, caption and prompt embeddings, set arrays)
  warm  the caches of the cold build, no results or figures (as after `make post`, then `rm -r results figures`)

Prints, for each build, its wall and CPU seconds, then the samples of the Python threads that were running (py-spy
leaves idle threads out: a thread waiting on `jekyll build` counts nothing), in seconds, by rule (the job threads'
`__rule_NAME` frames; the rest is Snakemake's own scheduling, parsing and bookkeeping) and by what the code was doing
(the first matching part of the stack, innermost first). `jekyll build` runs in Ruby: its seconds are measured apart
on the built site, three times.

  pip install py-spy          # not a requirement of the project
  python bench/profile_build.py [--rate 50] [--keep DIR]
"""

import argparse
import collections
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]
# What a sample was doing: (label, pattern of a frame "function (file.py:line)"), innermost frame matched first.
PARTS = [
    ("emoji set: rendering", r"render_emoji_set|load_emoji_set"),
    ("photo crops", r"photo_set|photo_parts"),
    ("MiniLM: caption and prompt vectors", r"\(.*minilm\.py"),
    ("set arrays (64 px, 256-px norms)", r"set_arrays"),
    ("local: ranking the set (candidates)", r"candidates \(.*local\.py"),
    ("local: window distances", r"local_weights \(.*local\.py"),
    ("local: posterior mean, variance", r"(block_patches|mean_and_variance|learned_range_of|assemble) \(.*local\.py"),
    ("exact denoiser", r"\(.*exact\.py"),
    ("denoisers: inputs and output, local stage II resizing", r"(Local(Denoiser|Upsampler)\.__call__|SetDenoiser\.(output|_stage_two_inputs)) \("),
    ("prompt weights (log_weights)", r"log_weights"),
    ("sampling loop, guidance, views", r"\(.*(sampling|guidance|views|filters|schedule|techniques|figures)\.py"),
    ("loading the backend (other)", r"load_backend|image_set_of|load_ideal"),
    ("layout: PNGs, frames, GIFs, metrics plot", r"\(.*layout\.py|\(.*png\.py"),
    ("the post (Jinja)", r"\(.*post\.py"),
    ("the site (publish, start jekyll)", r"\(.*site\.py"),
    ("reading and writing results", r"\(.*images\.py|safetensors"),
    ("importing modules", r"_find_and_load"),
]


def record(work: Path, rate: int) -> tuple[float, float, str]:
    """Run the build under py-spy; wall and CPU seconds, and the raw (collapsed) stacks."""
    raw = work / "profile.txt"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["py-spy", "record", "--rate", str(rate), "--format", "raw", "--output", str(raw), "--",
                    sys.executable, "-m", "snakemake", "--cores", "1"], cwd=work, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), raw.read_text()


WAITING = re.compile(r"^(Condition\.wait|Event\.wait|Thread\.join|_wait_for_tstate_lock|.*\.select|.*sleep|"
                     r"Popen\.communicate|Popen\._communicate|Popen\.wait|Popen\._try_wait) ")


def rule_of(frames: list[str]) -> str | None:
    """The rule a job thread's stack runs: Snakemake compiles `run:` blocks to functions __rule_NAME, and names the
    rules made in loops (sample_<section>, figure_<name>) by number, so those go by their rules file."""
    for frame in frames:
        if match := re.search(r"__rule_(\w+) \(.*?(\w+\.smk)", frame):
            name, rules_file = match.groups()
            return {"sampling.smk": "sample_<section>", "figures.smk": "figure_<name> (interactive figures)"}.get(
                rules_file, rules_file) if name.isdigit() else name
    return None


def tables(raw: str, rate: int) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds by rule and by part, from py-spy's collapsed stacks ("frame;frame;... count", outermost first), leaving
    out threads that wait (Snakemake's timers, the scheduler waiting for jobs, a job waiting for jekyll)."""
    by_rule, by_part = collections.Counter(), collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames or WAITING.match(frames[-1]):
            continue
        seconds = int(count) / rate
        by_rule[rule_of(frames) or "(Snakemake: start, parse, DAG, scheduling)"] += seconds
        part = next((label for f in reversed(frames) for label, pattern in PARTS if re.search(pattern, f)), None)
        by_part[part or ("Snakemake's own code" if any("snakemake" in f for f in frames) else "other")] += seconds
    return dict(by_rule), dict(by_part)


def jekyll_seconds(site: Path, runs: int = 3) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(["jekyll", "build", "--source", str(site), "--destination", out, "--quiet"], check=True,
                           capture_output=True, env={**os.environ, "JEKYLL_NO_BUNDLER_REQUIRE": "true"})
            times.append(time.perf_counter() - start)
    return times


def show(title: str, rows: dict[str, float]) -> None:
    total = sum(rows.values())
    print(f"\n{title} (sampled seconds, {total:.1f} in all)")
    for name, seconds in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<48}{seconds:8.1f}  {100 * seconds / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--keep", type=Path, help="keep the two projects (and their profiles) here")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        cache = base / "cache"
        for build in ("cold", "warm"):
            work = base / build
            work.mkdir(parents=True)
            copy_project(ROOT, work, cache)
            wall, cpu, raw = record(work, args.rate)
            print(f"\n== {build} build: {wall:.1f} s wall, {cpu:.1f} s CPU (py-spy attached: ~5 % slower)")
            by_rule, by_part = tables(raw, args.rate)
            show(f"{build}: by rule", by_rule)
            show(f"{build}: by part", by_part)
        times = jekyll_seconds(base / "warm" / "site")
        print(f"\njekyll build of the built site: {', '.join(f'{t:.2f}' for t in times)} s")


if __name__ == "__main__":
    main()
