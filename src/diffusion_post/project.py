"""A buildable copy of the project, for the workflow tests and the build benchmark."""

import os
import shutil
from pathlib import Path

import yaml


PROJECT = ("Snakefile", "config.yaml", "workflow", "profiles", "templates", "site")


def copy_project(root: Path, dest: Path, cache_dir: Path) -> None:
    """A buildable copy of the project at `root` in `dest` (no outputs; `src` linked), sharing the backend caches."""
    for name in PROJECT:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("_site", "_posts", "figures", ".jekyll-cache"))
        else:
            shutil.copy(root / name, dest / name)
    (dest / "src").symlink_to(root / "src")
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config["backend"]["cache_dir"] = str(cache_dir)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


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
    process works in this folder; that is known from /proc (Linux), so elsewhere nothing is removed."""
    workdir = Path(workdir).resolve()
    locks = sorted((workdir / ".snakemake" / "locks").glob("*.lock"))
    if not locks or not Path("/proc/self/cwd").exists():
        return []
    mine = _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            if Path(os.readlink(entry / "cwd")).resolve() == workdir and b"snakemake" in (entry / "cmdline").read_bytes():
                return []  # a live run holds them
        except OSError:
            continue
    for lock in locks:
        lock.unlink(missing_ok=True)
    return locks
