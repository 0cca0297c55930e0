"""The build a writer waits for, measured side by side: cold full build, warm full build, one-prompt rebuild.

Each round, for each project (this tree, and with --baseline REV the project at git revision REV, its own code from
`git archive`), one after the other (the baseline first in odd rounds, this tree first in even ones):
  cold     a fresh copy with an empty cache folder: `snakemake` (the profile: every core) renders the emoji set,
           crops the photos, encodes every caption and prompt, computes the set's arrays, samples and lays out every
           figure, renders the post and builds the site (MathJax comes from the npm tarball cached under ~/.cache/diffusion_post, as after
           `make post`'s first run: no registry is asked)
  warm     a fresh copy (no results, figures or post) sharing the cache the cold build filled
  rebuild  in the warm copy, after editing one prompt (the second prompt of the first anagram): its figures, their
           stage II and animation, the post and the site
  preview rebuild   the same edit rebuilt by the preview's builder (preview.Resident: Snakemake in a process that
           stays, as `diffusion-post preview` runs it), after another edit has loaded the backend there: what a
           writer waits for after each save, less the preview's 0.4 s quiet time and the page's reload
           (bench_preview.py measures those too). Projects without it (before f3a7900) show nan.
Wall seconds, CPU seconds (user + system of the build and its children) and the sampling the build's own jobs logged
(`diffusion-post: sampled NAME in S s`). With --rounds N the table shows the median of the N rounds, each round's
values beside it. Wall times on a 2-core virtual machine vary by a fifth or more between identical runs, even idle:
compare the two projects of the same run.

  python bench/bench_build.py --baseline 0a474e5 --rounds 3
"""

import argparse
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffusion_post.build import SAMPLED_MESSAGE
from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"cold": 90, "warm": 30, "rebuild": 5, "preview rebuild": 5}  # issue 22, seconds on an idle 2-core machine
EDITS = ("a snowman", "a lighthouse", "a red bicycle")  # the new prompt of each edit


def timed(command: list[str], cwd: Path) -> dict[str, float]:
    """Wall and CPU seconds of a command run with the project's own code (its src/), and the sampling it logged."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd / "src")})
    wall = time.perf_counter() - start
    if run.returncode:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{run.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampled = re.findall(rf"^{SAMPLED_MESSAGE} \S+ in ([\d.]+) s$", run.stderr, re.M)
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "sampling": sum(map(float, sampled)) if sampled else float("nan")}


def edit_one_prompt(config_path: Path, prompt: str = EDITS[0]) -> None:
    config = yaml.safe_load(config_path.read_text())
    anagram = next(spec for figures in config["figures"].values() for spec in figures.values() if spec["technique"] == "anagram")
    anagram["prompts"][1] = prompt
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def resident_rebuild(root: Path) -> None:
    """(Run with the project's own code.) In `root`, up to date after the first edit: the preview's builder rebuilds
    it after a second edit (loading the backend), then after a third (a prompt new to the cache, as the first two
    were); prints the wall and CPU seconds of the last."""
    from diffusion_post.preview import Resident

    build = Resident(say=lambda line: None)
    edit_one_prompt(root / "config.yaml", EDITS[1])
    assert build(root, "all", lambda line: None).error is None
    edit_one_prompt(root / "config.yaml", EDITS[2])
    cpu = lambda: sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    cpu_before, start = cpu(), time.perf_counter()
    outcome = build(root, "all", lambda line: None)
    wall, cpu = time.perf_counter() - start, cpu() - cpu_before  # this process's threads and `jekyll build`
    assert outcome.error is None and outcome.jobs, outcome
    print(f"{wall} {cpu}")


def measure(root: Path, scratch: Path) -> dict[str, dict[str, float]]:
    """One round of one project's three builds, in fresh copies under `scratch`."""
    build = [sys.executable, "-m", "snakemake"]  # as `make post` runs it: the profile's cores (all)
    cache = scratch / "cache"
    numbers = {}
    for name in ("cold", "warm"):
        work = scratch / name
        work.mkdir()
        copy_project(root, work, cache)
        numbers[name] = timed(build, work)
    edit_one_prompt(scratch / "warm" / "config.yaml")
    numbers["rebuild"] = timed(build, scratch / "warm")
    resident = subprocess.run([sys.executable, __file__, "--resident-rebuild", str(scratch / "warm")], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(root / "src")})
    wall, cpu = map(float, resident.stdout.split()) if resident.returncode == 0 else (math.nan, math.nan)
    if resident.returncode:  # (a tree without the preview's builder, or a failure: its last line says which)
        print(f"preview rebuild in {root.name}: {(resident.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
    numbers["preview rebuild"] = {"wall": wall, "cpu": cpu, "sampling": math.nan}
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REV", help="also measure the project at this git revision, in the same run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the table shows their median)")
    parser.add_argument("--resident-rebuild", type=Path, help=argparse.SUPPRESS)  # one measurement, run by measure()
    args = parser.parse_args()
    if args.resident_rebuild:
        return resident_rebuild(args.resident_rebuild)
    with tempfile.TemporaryDirectory() as tmp:
        projects = {"this tree": ROOT}
        if args.baseline:
            old = Path(tmp) / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            projects = {args.baseline: old, **projects}
        rounds: dict[str, list[dict]] = {name: [] for name in projects}
        for r in range(args.rounds):
            # the order alternates between rounds: the machine's speed drifts within a run, and the project measured
            # second in every round would get the drift's benefit (or cost) each time
            for name, root in list(projects.items())[::-1 if r % 2 else 1]:
                scratch = Path(tmp) / f"round-{r}-{name.replace(' ', '-')}"
                scratch.mkdir()
                rounds[name].append(measure(root, scratch))
                print(f"round {r + 1}, {name}: " + ", ".join(f"{build} {n['wall']:.1f} s" for build, n in rounds[name][-1].items()),
                      file=sys.stderr, flush=True)
    print(f"{'seconds (median of ' + str(args.rounds) + ')':<34}" + "".join(f"{name:>24}" for name in projects))
    for build, target in TARGETS.items():
        for key, label in (("wall", f"{build} build" if build in ("cold", "warm") else f"one-prompt {build}"),
                           ("cpu", "  CPU seconds"), ("sampling", "  sampling its jobs logged")):
            cells = []
            for name in projects:
                values = [r[build][key] for r in rounds[name]]
                each = "/".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values) if len(values) > 1 else ""
                cells.append(f"{statistics.median(values):8.1f} ({each})" if each else f"{statistics.median(values):8.1f}")
            target_note = f"   target <= {target}" if key == "wall" else ""
            print(f"{label:<34}" + "".join(f"{c:>24}" for c in cells) + target_note)


if __name__ == "__main__":
    main()
