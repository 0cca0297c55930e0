"""The shipped weights folder of the `trained` backend, and its round trip through the device's $OUT.

    weights/trained/
      stage_1/unet/{config.json, diffusion_pytorch_model.safetensors}   EMA weights, fp16
      stage_1/scheduler/scheduler_config.json                           IF's stage-I scheduler
      stage_2/unet/..., stage_2/scheduler/..., stage_2/image_noising_scheduler/...
      SHIPPED.json    sha256 of every weight file, the exact command, the data version and sha256, steps, losses
      loss.png        the loss curves of both stages

This is the hub layout `backends.deepfloyd.load_cascade` reads, so the trained backend loads through the code that
loads DeepFloyd IF and the tiny test models. The device returns at most 8 files of at most 16 MiB, so there the
weights travel as parts (`write_parts`) and are put back together here (`python -m diffusion_post.training.ship
FILES_AT weights/trained`), checked against the sha256s the device computed.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import sha256, write_json_atomic
from .models import if_scheduler, image_noising_scheduler

WEIGHTS = "diffusion_pytorch_model.safetensors"
PART_BYTES = 15 * 2**20  # the device returns files of at most 16 MiB
MAX_FILES = 8


def save_stage(unet, stage: int, folder: Path) -> Path:
    """One stage's UNet (as fp16) and schedulers in the hub layout under folder/stage_N."""
    root = folder / f"stage_{stage}"
    unet.save_config(root / "unet")  # what save_pretrained writes, with the tensors cast, not the module
    tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in unet.state_dict().items()}
    save_file(tensors, str(root / "unet" / WEIGHTS), metadata={"format": "pt"})
    if_scheduler(stage).save_pretrained(root / "scheduler")
    if stage == 2:
        image_noising_scheduler().save_pretrained(root / "image_noising_scheduler")
    return root


def stage_record(trainer) -> dict:
    last = trainer.history[-50:]
    return {"settings": {k: v for k, v in trainer.settings.__dict__.items()}, "steps": trainer.step,
            "seconds_last_run": round(getattr(trainer, "seconds", 0.0), 1),
            "loss_first_step": trainer.history[0]["loss"] if trainer.history else None,
            "loss_last_50_mean": sum(r["loss"] for r in last) / len(last) if last else None,
            "l_simple_last_50_mean": sum(r["l_simple"] for r in last) / len(last) if last else None}


def write_weights_folder(trainers: dict, data, folder: Path, command: str, loss_png: Path | None = None) -> dict:
    """Write each trained stage into `folder`, the loss curve, and SHIPPED.json (hashes, command, data version)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stage, trainer in trainers.items():
        save_stage(trainer.ema, stage, folder)  # the EMA weights: what sampling uses
    if loss_png is not None and loss_png.exists():
        shutil.copy(loss_png, folder / "loss.png")
    shipped = {"command": command, "data": {k: data.manifest.get(k) for k in ("version", "count", "sha256", "bytes")},
               "caption_encoder": data.manifest.get("caption_encoder"),
               "torch": torch.__version__, "device": str(next(iter(trainers.values())).device),
               "stages": {f"stage_{k}": stage_record(t) for k, t in trainers.items()}}
    return write_shipped(folder, shipped)


def write_shipped(folder: Path, shipped: dict) -> dict:
    """SHIPPED.json: `shipped` plus the sha256 of every weight file in `folder`."""
    shipped = {**shipped, "sha256": {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob(WEIGHTS))}}
    write_json_atomic(folder / "SHIPPED.json", shipped)
    return shipped


def write_parts(folder: Path, out: Path) -> list[Path]:
    """The weights folder as <= 8 flat files of <= 15 MiB: each UNet's tensors split into parts, and
    manifest.json with the UNet configs, SHIPPED.json and the parts' sha256 (plus the loss PNG)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"shipped": json.loads((folder / "SHIPPED.json").read_text()), "configs": {}, "parts": {}}
    written = []
    for unet_dir in sorted(folder.glob("stage_*/unet")):
        stage = unet_dir.parent.name
        manifest["configs"][stage] = json.loads((unet_dir / "config.json").read_text())
        tensors = load_file(str(unet_dir / WEIGHTS))
        parts, current, size = [], {}, 0
        for name, tensor in tensors.items():
            nbytes = tensor.numel() * tensor.element_size()
            if current and size + nbytes > PART_BYTES - 2**20:  # room for the header
                parts.append(current)
                current, size = {}, 0
            current[name], size = tensor, size + nbytes
        parts.append(current)
        for k, part in enumerate(parts):
            path = out / f"{stage}-part{k}.safetensors"
            save_file(part, str(path))
            manifest["parts"][path.name] = sha256(path)
            written.append(path)
    if (folder / "loss.png").exists():
        shutil.copy(folder / "loss.png", out / "loss.png")
        written.append(out / "loss.png")
    write_json_atomic(out / "manifest.json", manifest)
    written.append(out / "manifest.json")
    too_big = [p.name for p in written if p.stat().st_size > 16 * 2**20]
    if len(written) > MAX_FILES or too_big:
        raise RuntimeError(f"{len(written)} files (at most {MAX_FILES}), too big: {too_big}: the device cannot return them")
    return written


def unpack_parts(parts: Path, folder: Path) -> dict:
    """Rebuild the weights folder from the device's files; every part's and weight file's sha256 must match."""
    from diffusers import UNet2DConditionModel

    manifest = json.loads((parts / "manifest.json").read_text())
    for name, digest in manifest["parts"].items():
        if sha256(parts / name) != digest:
            raise ValueError(f"{parts / name}: sha256 differs from the device's manifest: fetch the files again")
    folder.mkdir(parents=True, exist_ok=True)
    for stage, config in manifest["configs"].items():
        tensors = {}
        for name in sorted(n for n in manifest["parts"] if n.startswith(f"{stage}-part")):
            tensors.update(load_file(str(parts / name)))
        with torch.device("meta"):
            UNet2DConditionModel.from_config(config)  # the config is a valid UNet
        unet_dir = folder / stage / "unet"
        unet_dir.mkdir(parents=True, exist_ok=True)
        (unet_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(unet_dir / WEIGHTS), metadata={"format": "pt"})
        number = int(stage.removeprefix("stage_"))
        if_scheduler(number).save_pretrained(folder / stage / "scheduler")
        if number == 2:
            image_noising_scheduler().save_pretrained(folder / stage / "image_noising_scheduler")
    shipped = manifest["shipped"]
    for name, digest in shipped["sha256"].items():
        if sha256(folder / name) != digest:
            raise ValueError(f"{folder / name}: rebuilt weights differ from the device's (sha256): do not ship them")
    if (parts / "loss.png").exists():
        shutil.copy(parts / "loss.png", folder / "loss.png")
    write_json_atomic(folder / "SHIPPED.json", shipped)
    return shipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild weights/trained from the device run's files")
    parser.add_argument("parts", help="the folder the device's $OUT files landed in")
    parser.add_argument("folder", nargs="?", default="weights/trained")
    args = parser.parse_args(argv)
    shipped = unpack_parts(Path(args.parts), Path(args.folder))
    print(f"{args.folder}: " + ", ".join(f"{k} {v[:12]}" for k, v in shipped["sha256"].items()))


if __name__ == "__main__":
    main()
