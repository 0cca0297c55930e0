"""Shared fixtures: one tiny random IF cascade (stage I 32 px, stage II 64 px) written in the hub layout and
loaded through the same code that loads DeepFloyd IF, plus its prompt embeddings; the whole post built once
(`build`) and one headless Chromium (`browser`) for the tests that read it."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusion_post import schedule
from diffusion_post.backends.deepfloyd import load_cascade
from diffusion_post.backends.tiny import make_tiny_if
from diffusion_post.denoiser import Cascade

PROMPT = "a high quality photo"
OTHER_PROMPTS = ("an oil painting of a snowy mountain village", "a photo of a dog")


def pytest_configure(config):
    """One intra-op thread: the tiny models gain nothing from more, and on a busy 2-core machine (a CI runner, or
    a workflow running beside the tests) OpenMP threads spinning against other processes made the suite ~5x slower
    (measured: 6 min 44 s with 2 threads vs 1 min 14 s with 1, same load)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> tuple[Path, Path]:
    """stage_1/ and stage_2/ folders of a tiny IF cascade (made once per session)."""
    return make_tiny_if(tmp_path_factory.mktemp("tiny_if"), seed=0, stage_1_size=32, stage_2_size=64)


@pytest.fixture(scope="session")
def cascade(tiny_folders, tmp_path_factory) -> Cascade:
    stage_1, stage_2 = tiny_folders
    return load_cascade(str(stage_1), str(stage_2), device="cpu", cache_dir=tmp_path_factory.mktemp("prompt_embeds"),
                        backend="tiny")


@pytest.fixture(scope="session")
def embeds(cascade) -> dict[str, torch.Tensor]:
    """(1, 77, 32) embeddings of the test prompts and of the unconditional prompt ""."""
    prompts = [PROMPT, *OTHER_PROMPTS, ""]
    return {p: e[None] for p, e in zip(prompts, cascade.embed(prompts))}


@pytest.fixture(scope="session")
def strided() -> list[int]:
    """The post's schedule 990, 960, ..., 0 (34 timesteps)."""
    return schedule.strided_timesteps(990, 30)


@pytest.fixture(scope="session")
def short() -> list[int]:
    """A 12-step schedule 990, 900, ..., 0 for tests that only need the loop to run."""
    return schedule.strided_timesteps(990, 90)


@pytest.fixture
def stage_1_scheduler(tiny_folders):
    """A fresh diffusers DDPMScheduler with the tiny stage I's IF config; keyword overrides replace config values."""
    from diffusers import DDPMScheduler

    def make(**overrides) -> DDPMScheduler:
        return DDPMScheduler.from_pretrained(tiny_folders[0], subfolder="scheduler", **overrides)

    return make


# ------------------------------------------------------------------ the built post and a browser, shared by test files

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
ROOT = Path(__file__).resolve().parents[1]


def needs(tool: str, available: bool | None = None):
    """Skip when `tool` is missing, except under CI=true, where the test runs (and fails): a missing install step
    cannot pass unnoticed."""
    available = shutil.which(tool) is not None if available is None else available
    return pytest.mark.skipif(not available and not IN_CI, reason=f"{tool} not installed (runs under CI=true)")


def wait_until(condition, timeout: float = 60, what: str = "condition"):
    """Poll `condition` until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Path:
    """A copy of the project, built once by `snakemake --cores 1` for every test file that reads the whole post.
    The backend's caches (emoji set, prompt embeddings) are shared with the project."""
    from diffusion_post.project import copy_project

    root = tmp_path_factory.mktemp("post")
    copy_project(ROOT, root, ROOT / ".cache")
    run = snakemake(root, "--cores", "1")
    (root / "build.log").write_text(run.stderr)  # what the build printed (e.g. its model loads)
    return root


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Playwright on Debian's chromium) for the whole session."""
    from browser import Browser, chromium_path

    try:
        import playwright  # noqa: F401
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("playwright not installed (pip install -r requirements.txt)")
    if chromium_path() is None and not IN_CI:
        pytest.skip("chromium not installed (scripts/install_system_deps.sh; runs under CI=true)")
    with Browser() as session_browser:
        yield session_browser
