"""A buildable copy of the project (for `verify`, the rule graph, the workflow tests and the build benchmark), the
workflow's rule graph, stale locks, and a quick exit."""

import atexit
import functools
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


WORKFLOW = ("Snakefile", "config.yaml", "workflow", "profiles")  # enough to make the figures
PROJECT = (*WORKFLOW, "templates", "site")  # the post and its site too


def copy_project(root: Path, dest: Path, cache_dir: Path, parts: tuple[str, ...] = PROJECT) -> None:
    """A buildable copy of the project at `root` in `dest` (its `parts`, no outputs; `src` linked), sharing the
    backend caches."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in parts:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("_site", "_posts", "figures", ".jekyll-cache"))
        else:
            shutil.copy(root / name, dest / name)
    (dest / "src").symlink_to(root / "src")
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config["backend"]["cache_dir"] = str(cache_dir)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake_output(cwd: Path | str, *args: str) -> str:
    """What `snakemake ARGS` prints in `cwd`; RuntimeError with its last line when it fails."""
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    return run.stdout


def rule_names(listing: str) -> list[str]:
    """The rule names of `snakemake --list-rules` or `--list-target-rules` (a docstring's later lines indented)."""
    return [line.split()[0] for line in listing.splitlines() if line.strip() and not line[0].isspace()]


def rulegraph(root: Path) -> str:
    """The rule graph of the workflow at `root` as Graphviz DOT: `snakemake --rulegraph --forceall` of every rule
    that can be a target (the default one, `data`, `train`, `verify`, ...), so that it shows every rule; its edges
    sorted (Snakemake lists them in an order that changes from run to run). Made in a scratch copy (a Snakemake
    started inside a running one must not take that one's locks for stale), with a backend that encodes its prompts
    first (tiny, as deepfloyd), so that encode_prompt has jobs too: the embedded default's graph is this one without
    it."""
    with tempfile.TemporaryDirectory(prefix="diffusion-post-rulegraph-") as scratch:
        copy_project(root, Path(scratch), root / ".cache", parts=WORKFLOW)
        config = yaml.safe_load((Path(scratch) / "config.yaml").read_text())
        config["backend"]["name"] = "tiny"
        (Path(scratch) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        targets = rule_names(snakemake_output(scratch, "--list-target-rules"))
        lines = snakemake_output(scratch, "--rulegraph", "--forceall", *targets).splitlines()
    return canonical_dot(lines)


def canonical_dot(lines: list[str]) -> str:
    """Snakemake's rule graph in one order: nodes numbered by rule name, edges sorted (Snakemake numbers the nodes
    and lists the edges in an order that changes from run to run)."""
    node, edge = re.compile(r'\s*(\d+)(\[label = "([^"]+)".*)'), re.compile(r"\s*(\d+) -> (\d+)")
    nodes = sorted((m.group(3), m.group(1), m.group(2)) for m in map(node.fullmatch, lines) if m)
    number = {old: k for k, (_, old, _) in enumerate(nodes)}
    edges = sorted((number[m.group(1)], number[m.group(2)]) for m in map(edge.fullmatch, lines) if m)
    head = lines[:next(i for i, line in enumerate(lines) if node.fullmatch(line))]
    body = [f"\t{number[old]}{rest}" for _, old, rest in nodes] + [f"\t{a} -> {b}" for a, b in edges]
    return "\n".join([*head, *body, "}"]) + "\n"


def write_rulegraph(root: Path, dot: Path | str, svg: Path | str) -> None:
    """docs/rulegraph.dot (rulegraph) and docs/rulegraph.svg, drawn from it by Graphviz's `dot`, left to right (the
    per-figure layout rules make a rank too wide to read from top to bottom)."""
    from .files import atomic_path

    if shutil.which("dot") is None:
        raise RuntimeError("Graphviz's dot not found: run scripts/install_system_deps.sh (apt-get install graphviz)")
    source = rulegraph(root)
    picture = subprocess.run(["dot", "-Grankdir=LR", "-Tsvg"], input=source, capture_output=True, text=True, check=True).stdout
    for path, text in ((dot, source), (svg, picture)):
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def _ancestors() -> set[int]:
    """This process and its parents (a shell or `make` that started Snakemake works in the same folder)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def remove_stale_locks(workdir: Path | str = ".") -> list[Path]:
    """Remove the locks a killed Snakemake run (kill -9, a crash, a power loss) left in `workdir`/.snakemake/locks,
    which would otherwise stop every later run until `snakemake --unlock`. Locks are stale when no other Snakemake
    process, and no `diffusion-post preview` (which runs Snakemake in its own process), works in this folder; that is
    known from /proc (Linux), so elsewhere nothing is removed."""
    workdir = Path(workdir).resolve()
    locks = sorted((workdir / ".snakemake" / "locks").glob("*.lock"))
    if not locks or not Path("/proc/self/cwd").exists():
        return []
    mine = _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            builds = b"snakemake" in command or (b"diffusion" in command and b"preview" in command)  # (it runs its own)
            if builds and Path(os.readlink(entry / "cwd")).resolve() == workdir:
                return []  # a live run holds them
        except OSError:
            continue
    for lock in locks:
        lock.unlink(missing_ok=True)
    return locks


@functools.cache  # once per process: the preview's process reads the workflow at every build
def freeze_at_exit() -> None:
    """At exit, before Python's last garbage collection, move every object into the collector's permanent generation:
    that collection would walk all that torch and Snakemake made (~0.45 s of a 5-s one-prompt rebuild) to free memory
    the process is about to give back anyway. So objects in reference cycles are not finalized at exit (their
    __del__ does not run; every file the build writes is closed by then). atexit handlers registered after this one
    still run before the freeze."""
    atexit.register(gc.freeze)
