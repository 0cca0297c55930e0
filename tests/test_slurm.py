"""The workflow on a real single-node SLURM cluster (Debian's slurm-wlm and munge, configured and started by
scripts/slurm_cluster.sh on localhost), submitted as the README says: `snakemake --workflow-profile profiles/slurm`.

One figure per section (plus a stage II with its source, and two unconnected figures of one section) is built on
the cluster and locally; the outputs must be byte-identical, each section must be one submitted job that loads the
models once, and a job cancelled with `scancel` while it samples must leave no partial file and rerun. Last, a
GPU backend's job must ask for a GPU and be scheduled on a node that has one (a stand-in)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import wait_until

from diffusion_post import config as post_config
from diffusion_post.backends import LOAD_MESSAGE
from diffusion_post.project import copy_project

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
FIGURES = ["setup_stage_1", "setup_stage_2", "forward", "samples", "cfg_samples", "sdedit_test_image",
           "anagram_citadel_castle", "hybrid_skull_castle"]
SECTIONS = 6  # the sections the figures above come from
TARGETS = [f"figures/{name}.png" for name in FIGURES]
RESULTS = [f"results/{name}.safetensors" for name in FIGURES]


def _start_cluster(env: dict | None = None) -> str | None:
    """Start the test cluster; None when it is up, else why it cannot be."""
    if os.geteuid() != 0:
        return "needs root: scripts/slurm_cluster.sh starts munged, slurmctld and slurmd"
    if not shutil.which("slurmctld"):
        install = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True)
        if install.returncode != 0:
            return f"slurm-wlm/munge could not be installed: {install.stderr.strip()[-300:]}"
    start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if start.returncode != 0:
        return f"the SLURM test cluster did not start: {(start.stderr or start.stdout).strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _start_cluster()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the SLURM test as root, but {why}")
        pytest.skip(why)
    yield
    subprocess.run(["bash", str(SCRIPT), "stop"], check=True, capture_output=True)


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run


CLUSTER = ("--workflow-profile", "profiles/slurm")  # as the README says


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def project(tmp_path_factory, name: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    copy_project(ROOT, root, ROOT / ".cache")
    return root


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """The same figures built locally (profiles/default); also prepares the backend's shared caches."""
    root = project(tmp_path_factory, "local")
    run = snakemake(root, "--cores", "1", *TARGETS)
    config = yaml.safe_load((root / "config.yaml").read_text())
    backends = {json.dumps(post_config.figure_backend(config, post_config.resolve(config, name)), sort_keys=True)
                for name in FIGURES}
    assert run.stderr.count(LOAD_MESSAGE) == len(backends)  # every job in the Snakemake process: one load per backend
    return root


def test_cluster_build_is_byte_identical_with_one_model_load_per_section(cluster, local, tmp_path_factory):
    remote = project(tmp_path_factory, "remote")
    snakemake(remote, *CLUSTER, *TARGETS)
    for path in TARGETS + RESULTS:
        assert digest(remote / path) == digest(local / path), path
    logs = sorted((remote / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == SECTIONS, [p.name for p in logs]  # one submitted job per section: group sample_<section>
    assert all(log.name.startswith("sample_") for log in logs)
    loads = {log.name: log.read_text().count(LOAD_MESSAGE) for log in logs}
    assert set(loads.values()) == {1}, loads  # each job loads the models once for all its figures


def test_cancelled_job_leaves_no_partial_file_and_reruns(cluster, local, tmp_path_factory):
    root = project(tmp_path_factory, "cancel")
    target, result = "figures/cfg_samples.png", "results/cfg_samples.safetensors"
    build = subprocess.Popen([sys.executable, "-m", "snakemake", *CLUSTER, target], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def sampling_job() -> tuple[str, Path] | None:
            """(SLURM job id, its log) once the job has started loading the backend, i.e. is about to sample."""
            for log in (root / ".snakemake" / "slurm_logs").rglob("*.log"):
                if LOAD_MESSAGE in log.read_text():  # <group>-<SLURM job id>.log
                    return log.stem.rsplit("-", 1)[1], log
            return None

        job_id, _ = wait_until(sampling_job, 600, "the sampling job to start")
        subprocess.run(["scancel", job_id], check=True)
        output, _ = build.communicate(timeout=600)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode != 0, output[-2000:]
    assert "CANCELLED" in output, output[-2000:]
    assert not (root / result).exists() and not (root / target).exists()
    leftovers = [p.name for folder in ("results", "figures") if (root / folder).is_dir()
                 for p in (root / folder).rglob("*") if p.is_file() and "cfg_samples" in p.name]
    assert leftovers == []  # neither the output nor a temporary part of it

    snakemake(root, *CLUSTER, target)  # reruns the cancelled job
    assert digest(root / result) == digest(local / result)
    assert digest(root / target) == digest(local / target)


def test_a_gpu_backend_asks_the_cluster_for_a_gpu(cluster, tmp_path_factory):
    """resources: gpu=1 reaches sbatch as --gpus=1 for a backend that runs on a GPU (tiny, no device set), and the
    job gets the node's GPU. The node is restarted with one stand-in GPU (SLURM_FAKE_GPU=1: a gres on /dev/null);
    the tests above ran on it without one, where the ideal backend's --gpus=0 was accepted."""
    subprocess.run(["bash", str(SCRIPT), "stop"], check=True, capture_output=True)
    assert _start_cluster({"SLURM_FAKE_GPU": "1"}) is None
    root = project(tmp_path_factory, "gpu")
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["backend"] = {"name": "tiny", "cache_dir": str(ROOT / ".cache")}
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(root, *CLUSTER, "results/forward.safetensors")
    (log,) = (root / ".snakemake" / "slurm_logs").rglob("*.log")
    job = subprocess.run(["scontrol", "show", "job", log.stem.rsplit("-", 1)[1]], capture_output=True, text=True, check=True).stdout
    assert "gres:gpu:1" in job, job  # TresPerJob: the GPU asked for and given
