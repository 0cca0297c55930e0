"""A buildable copy of the project, for the workflow tests and the build benchmark."""

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
