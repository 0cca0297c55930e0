"""The command line: one figure without Snakemake, a figure's parameters, config checks."""

import json
import shutil
from pathlib import Path

import yaml

from diffusion_post.cli import main
from diffusion_post.png import read_parameters

ROOT = Path(__file__).resolve().parents[1]


def test_figure_then_describe(tmp_path, monkeypatch, capsys):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["backend"] = {"name": "tiny", "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["figure", "forward"]) == 0
    parameters = read_parameters(tmp_path / "figures" / "forward.png")
    assert parameters["technique"] == "forward" and parameters["timesteps"] == [250, 500, 750]
    assert parameters["seed"] == 100 and parameters["models"]["backend"] == "tiny"
    capsys.readouterr()
    assert main(["describe", "figures/forward.png"]) == 0
    assert json.loads(capsys.readouterr().out) == parameters


def test_figure_needs_its_source_first(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["figure", "blur"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "diffusion-post figure forward" in err


def test_check_config_reports_one_line(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["seed"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["check-config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffusion-post: error: config: at seed:") and "\n" not in err
