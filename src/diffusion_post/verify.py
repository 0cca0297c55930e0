"""`diffusion-post verify`: rebuild the post's figures from config.yaml in a scratch copy of the project and
compare them, byte for byte, with the published ones (site/assets/figures, what the site serves).

A figure is identical when every file the post shows of it (its PNG, a comparison panel or an animation, its
frames) has the same bytes. Where one differs, the two records say why: which recorded part differs (code
version, library versions, torch threads, processor, parameters: provenance.RECORD_PARTS), or that nothing
recorded explains it. Nothing of the project is written: the scratch folder is removed at the end, after Ctrl-C too.
"""

import signal
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageSequence

from . import config as post_config
from .png import read_parameters
from .project import WORKFLOW, copy_project
from .provenance import SAMPLED_MESSAGE, differing_parts

IDENTICAL, DIFFERS, CANNOT_COMPARE = "identical", "differs", "cannot compare"
PUBLISHED = "site/assets/figures"
BUILD_OUTPUTS = {"results", "figures", "site", ".snakemake", ".git"}  # never linked into the scratch copy


@dataclass(frozen=True)
class Row:
    figure: str
    status: str  # IDENTICAL, DIFFERS or CANNOT_COMPARE
    detail: str


def verify(root: Path | str = ".", published: Path | str | None = None, names: list[str] | None = None,
           cores: int | str = 1, log: TextIO = sys.stderr) -> list[Row]:
    """Rebuild the figures `names` (default: all) of the project at `root` in a scratch folder and compare each with
    its published copy under `published` (default: root/site/assets/figures); one Row per figure."""
    root = Path(root).resolve()
    config = post_config.load(root / "config.yaml")
    files = post_config.files_by_figure(config)
    names = list(dict.fromkeys(names or files))  # in the order given, once each
    unknown = [n for n in names if n not in files]
    if unknown:
        raise post_config.ConfigError(f"no figure {unknown[0]!r} in {root / 'config.yaml'}: use one of {', '.join(files)}")
    published = Path(published) if published else root / PUBLISHED
    if not published.is_dir():
        raise FileNotFoundError(f"no published figures in {published}: build the post first (snakemake --cores 1), "
                                f"or give the folder with --published")
    unpublished = {n: next((f for f in files[n] if not (published / _under_figures(f)).is_file()), None) for n in names}
    rows = {n: Row(n, CANNOT_COMPARE, f"not published: {published / _under_figures(f)} is missing")
            for n, f in unpublished.items() if f}
    to_rebuild = [n for n in names if n not in rows]
    with tempfile.TemporaryDirectory(prefix="diffusion-post-verify-") as scratch:
        project = Path(scratch) / "project"
        if to_rebuild:
            print(f"diffusion-post verify: rebuilding {len(to_rebuild)} figure(s) in {project}", file=log, flush=True)
            rebuild(root, project, [f for n in to_rebuild for f in files[n]], _cache_dir(root, config), cores, log)
        rows.update({n: compare(n, files[n], published, project) for n in to_rebuild})
    return [rows[n] for n in names]


def _under_figures(file: str) -> Path:
    """figures/NAME/frame-0.png -> NAME/frame-0.png: where the site publishes it."""
    return Path(file).relative_to("figures")


def _cache_dir(root: Path, config: dict) -> Path:
    return root / Path(config["backend"].get("cache_dir", ".cache")).expanduser()


def rebuild(root: Path, project: Path, targets: list[str], cache_dir: Path, cores: int | str, log: TextIO) -> None:
    """`snakemake --cores N TARGETS` in a fresh copy of the project's workflow at `project` (the rest of the project,
    such as the user's input images, linked; never its outputs). Prints each sampled figure and, on failure, the
    end of Snakemake's log; stops Snakemake before returning or raising (Ctrl-C)."""
    copy_project(root, project, cache_dir, parts=WORKFLOW)
    for entry in root.iterdir():
        if entry.name not in BUILD_OUTPUTS and not (project / entry.name).exists():
            (project / entry.name).symlink_to(entry)
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--keep-going", *targets]
    run = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: deque[str] = deque(maxlen=30)
    try:
        for line in run.stdout:
            tail.append(line)
            if line.startswith(SAMPLED_MESSAGE):
                print(f"  {line.rstrip()}", file=log, flush=True)
        run.wait()
    finally:
        _stop(run)
    if run.returncode:
        print(f"diffusion-post verify: the rebuild failed (exit {run.returncode}); the end of its log:\n{''.join(tail)}",
              file=log, flush=True)


def _stop(run: subprocess.Popen) -> None:
    """Stop Snakemake as Ctrl-C does (it then removes its incomplete outputs), and kill it if it does not."""
    if run.poll() is None:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    run.stdout.close()


def compare(name: str, files: list[str], published: Path, project: Path) -> Row:
    """One figure: its published files against those rebuilt in `project`."""
    missing = [f for f in files if not (project / f).is_file()]
    if missing:
        return Row(name, CANNOT_COMPARE, f"the rebuild did not make {missing[0]} (see its log above)")
    differing = [f for f in files if (published / _under_figures(f)).read_bytes() != (project / f).read_bytes()]
    if not differing:
        return Row(name, IDENTICAL, f"{len(files)} file{'s' if len(files) > 1 else ''}, the same bytes")
    pixels = "the same pixels" if all(_same_pixels(published / _under_figures(f), project / f) for f in differing) \
        else "other pixels"
    where = f"{Path(differing[0]).name}{f' and {len(differing) - 1} more' if len(differing) > 1 else ''}: {pixels}"
    try:  # the figure's record: its PNG's (the first of its files); an animation and frames carry the same
        parts = differing_parts(read_parameters(published / _under_figures(files[0])), read_parameters(project / files[0]))
    except ValueError as error:
        return Row(name, DIFFERS, f"{where}; {error}")
    if not parts:
        return Row(name, DIFFERS, f"{where}; nothing recorded explains it")
    return Row(name, DIFFERS, f"{where}; the records differ in {'; '.join(f'{part} ({what})' for part, what in parts.items())}")


def _frames(path: Path) -> list[np.ndarray]:
    """The RGB pixels of every frame of an image (one for a PNG, all of an animation)."""
    with Image.open(path) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def _same_pixels(a: Path, b: Path) -> bool:
    x, y = _frames(a), _frames(b)
    return len(x) == len(y) and all(f.shape == g.shape and np.array_equal(f, g) for f, g in zip(x, y))


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table, and a last line counting them."""
    width = max([len("figure")] + [len(r.figure) for r in rows])
    status = max(len(s) for s in (IDENTICAL, DIFFERS, CANNOT_COMPARE))
    lines = [f"{'figure':{width}}  {'result':{status}}  detail"]
    lines += [f"{r.figure:{width}}  {r.status:{status}}  {r.detail}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in (IDENTICAL, DIFFERS, CANNOT_COMPARE)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + (": the published figures are reproduced" if
                 counts[IDENTICAL] == len(rows) else ": not every published figure is reproduced"))
    return "\n".join(lines)
