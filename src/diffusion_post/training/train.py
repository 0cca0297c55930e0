"""Training the trained backend's stages: a resumable loop with a progress bar, EMA weights and a loss curve.

    python -m diffusion_post.training.train --data results/train/data-v2.npz --work results/train \
        --weights weights/trained [--preset device|micro] [--steps-1 N] [--batch-1 B] [--budget-1 SECONDS] \
        [--device cuda] [--compile] [--parts $OUT]        (`snakemake train` runs this; so does scripts/device_train.sh)

Every draw (images, augmentations, caption dropout, t, noise, stage II's noise level) comes from ONE generator
whose state is checkpointed with the model, the EMA, the optimizer and the step, so resuming from a checkpoint
continues the same run. On CUDA the UNet runs under bf16 autocast (fp32 master weights).
"""

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .. import schedule
from ..files import atomic_path
from .data import TrainingSet, downsample
from .losses import hybrid_loss
from .models import MAX_NOISE_LEVEL, STAGE_SIZES, if_scheduler, image_noising_scheduler, make_unet


@dataclass
class Settings:
    stage: int = 1
    preset: str = "device"
    size: int | None = None  # output size of the stage (default 64 / 128); tests train smaller
    steps: int = 4000
    batch: int = 256
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # so that classifier-free guidance has an unconditional model
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    time_budget: float | None = None  # seconds of training after start-up; stop early (and say so) when spent
    device: str = "cpu"
    compile: bool = False
    sync_every: int = 25  # steps between reading the losses back from the device (each read waits for the GPU)

    def __post_init__(self):
        if self.sync_every < 1:
            raise ValueError(f"sync_every is {self.sync_every}: the losses are read back every N >= 1 steps")

    @property
    def image_size(self) -> int:
        return self.size or STAGE_SIZES[self.stage]


class Trainer:
    """The UNet, its EMA copy, the optimizer, the generator, the step and the loss history of one stage."""

    def __init__(self, settings: Settings, data: TrainingSet):
        s = self.settings = settings
        self.device = torch.device(s.device)
        self.data = data
        torch.manual_seed(s.seed)  # the initial weights
        self.unet = make_unet(s.stage, s.preset, s.image_size).to(self.device).train()
        self.ema = make_unet(s.stage, s.preset, s.image_size).to(self.device).eval().requires_grad_(False)
        self.ema.load_state_dict(self.unet.state_dict())
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.generator = torch.Generator(self.device).manual_seed(s.seed)
        self.alphas_cumprod = if_scheduler(s.stage).alphas_cumprod.to(self.device)
        self.lowres_alphas_cumprod = image_noising_scheduler().alphas_cumprod.to(self.device)
        self.step = 0
        self.history = []
        self.forward = torch.compile(self.unet) if s.compile else self.unet

    @property
    def history(self) -> list[dict]:
        """Per step: loss, L_simple, L_t as floats (the losses not yet read back are read now)."""
        self.read_losses()
        return self._history

    @history.setter
    def history(self, records: list[dict]) -> None:
        self._history, self._pending = list(records), []

    def read_losses(self) -> None:
        """The steps keep their losses on the device; read them back all at once: one wait for the GPU instead of
        one per step."""
        if self._pending:
            values = torch.stack([torch.stack(losses) for _, losses in self._pending]).tolist()
            self._history += [{"step": step, "loss": loss, "l_simple": l_simple, "l_vlb": l_vlb}
                              for (step, _), (loss, l_simple, l_vlb) in zip(self._pending, values)]
            self._pending = []

    # --- one step ---------------------------------------------------------------------------------------------
    def draw(self) -> dict[str, Tensor]:
        """A training batch: x0, the model input x_in, eps, t, class labels and the conditioning."""
        s, g = self.settings, self.generator
        idx = torch.randint(0, len(self.data), (s.batch,), generator=g, device=self.device)
        images, cond = self.data.batch(idx, g, s.caption_dropout)
        x0 = downsample(images, s.image_size) if s.image_size < images.shape[-1] else images
        t = torch.randint(0, len(self.alphas_cumprod), (s.batch,), generator=g, device=self.device)
        eps = torch.randn(x0.shape, generator=g, device=self.device)
        x_t = schedule.add_noise(x0, eps, self.alphas_cumprod[t].view(-1, 1, 1, 1))
        x_in, class_labels = x_t, None
        if s.stage == 2:  # IF-II's input: x_t beside the noised, bilinearly upsampled half-size image
            low = downsample(x0, s.image_size // 2)
            up = F.interpolate(low, size=x0.shape[-2:], mode="bilinear", align_corners=True)
            class_labels = torch.randint(0, MAX_NOISE_LEVEL, (s.batch,), generator=g, device=self.device)
            noise = torch.randn(up.shape, generator=g, device=self.device)
            up = schedule.add_noise(up, noise, self.lowres_alphas_cumprod[class_labels].view(-1, 1, 1, 1))
            x_in = torch.cat([x_t, up], dim=1)
        return {"x0": x0, "x_in": x_in, "x_t": x_t, "eps": eps, "t": t, "class_labels": class_labels, "cond": cond}

    def loss(self, unet, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = unet(batch["x_in"], batch["t"], encoder_hidden_states=batch["cond"],
                       class_labels=batch["class_labels"], return_dict=False)[0]
        return hybrid_loss(out, batch["x0"], batch["x_t"], batch["eps"], batch["t"], self.alphas_cumprod)

    def train_step(self) -> None:
        s = self.settings
        batch = self.draw()
        loss, l_simple, l_t = self.loss(self.forward, batch)
        for group in self.optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = s.lr * min(1.0, (self.step + 1) / max(1, s.warmup))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), s.grad_clip)
        self.optimizer.step()
        with torch.no_grad():  # EMA of the weights: what sampling uses
            decay = min(s.ema_decay, (1 + self.step) / (10 + self.step))
            for e, p in zip(self.ema.parameters(), self.unet.parameters()):
                e.lerp_(p, 1 - decay)
        self.step += 1
        self._pending.append((self.step, (loss.detach(), l_simple, l_t)))
        if self.step % s.sync_every == 0:
            self.read_losses()

    # --- checkpoints --------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"settings": dataclasses.asdict(self.settings), "unet": self.unet.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "step": self.step, "history": self.history,
                "data": self.data.manifest.get("sha256")}

    def save_checkpoint(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["data"] != self.data.manifest.get("sha256"):
            raise ValueError(f"checkpoint {path} was trained on other data: delete it to start again, or use its data file")
        made = {k: state["settings"][k] for k in ("stage", "preset", "size")}
        if made != {k: getattr(self.settings, k) for k in made}:
            raise ValueError(f"checkpoint {path} is of another model ({made}): delete it to start again")
        self.unet.load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.step, self.history = state["step"], state["history"]


def train(settings: Settings, data: TrainingSet, checkpoint: Path | None = None, progress: bool = True) -> Trainer:
    """Train `settings.steps` steps (or until `time_budget` runs out), resuming from `checkpoint` if it exists
    and saving it every `checkpoint_every` steps and at the end."""
    trainer = Trainer(settings, data)
    if checkpoint is not None and checkpoint.exists():
        trainer.load_checkpoint(checkpoint)
    start = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=trainer.step, disable=not progress, desc=f"stage {settings.stage}",
               mininterval=0.1 if sys.stderr.isatty() else 15)  # a log (the device's output) gets a line every 15 s
    while trainer.step < settings.steps:
        trainer.train_step()
        bar.update(1)
        if trainer.step % settings.sync_every == 0:  # just read back
            bar.set_postfix(loss=f"{trainer.history[-1]['loss']:.4f}")
        if checkpoint is not None and trainer.step % settings.checkpoint_every == 0:
            trainer.save_checkpoint(checkpoint)
        if settings.time_budget is not None and time.perf_counter() - start > settings.time_budget:
            bar.write(f"stage {settings.stage}: time budget of {settings.time_budget:.0f} s spent at step {trainer.step}")
            break
    bar.close()
    trainer.read_losses()  # so the GPU has finished every step before the clock is read
    trainer.seconds = time.perf_counter() - start
    if checkpoint is not None:
        trainer.save_checkpoint(checkpoint)
    return trainer


def smoothed(values: list[float], window: int = 50) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_losses(histories: dict[str, list[dict]], path: Path | str) -> None:
    """Loss curves (L_simple and the VLB term, moving average over 50 steps) of each stage, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, history in histories.items():
        steps = [r["step"] for r in history]
        axes[0].plot(steps, smoothed([r["l_simple"] for r in history]), label=name)
        axes[1].plot(steps, smoothed([r["l_vlb"] for r in history]), label=name)
    for ax, title in zip(axes, ["L_simple (noise MSE)", "L_t (VLB term, bits/dim)"]):
        ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_title(title), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def fixed_batch_loss(trainer: Trainer, batch: dict[str, Tensor], use_ema: bool = False) -> float:
    """L_simple of `batch` (a draw kept aside): the same images, t and noise every time it is evaluated."""
    return trainer.loss(trainer.ema if use_ema else trainer.unet, batch)[1].item()


def main(argv=None) -> None:
    """Both stages (or those of --stages), then the weights folder the `trained` backend loads, and the loss PNG."""
    from .ship import write_weights_folder, write_parts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the data rule's .npz (its .json manifest beside it)")
    parser.add_argument("--work", required=True, help="folder for checkpoints and the loss curve (resumes from there)")
    parser.add_argument("--weights", required=True, help="folder to write the shipped cascade into (hub layout)")
    parser.add_argument("--preset", default="device", choices=["device", "micro"])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    for stage in (1, 2):
        parser.add_argument(f"--steps-{stage}", type=int, default=Settings.steps)
        parser.add_argument(f"--batch-{stage}", type=int, default=Settings.batch)
        parser.add_argument(f"--size-{stage}", type=int, default=None, help="image size (tests: smaller)")
        parser.add_argument(f"--budget-{stage}", type=float, default=None, help="seconds; stop early when spent")
    parser.add_argument("--lr", type=float, default=Settings.lr)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--sync-every", type=int, default=Settings.sync_every, help="steps between loss read-backs")
    parser.add_argument("--parts", default=None, help="also write the weights as files of <= 15 MiB here (device $OUT)")
    parser.add_argument("--command", default=None, help="the command to record in SHIPPED.json (default: this one)")
    args = parser.parse_args(argv)

    def settings_of(stage: int) -> Settings:
        return Settings(stage=stage, preset=args.preset, size=getattr(args, f"size_{stage}"),
                        steps=getattr(args, f"steps_{stage}"), batch=getattr(args, f"batch_{stage}"), lr=args.lr,
                        seed=args.seed + stage, time_budget=getattr(args, f"budget_{stage}"), device=args.device,
                        compile=args.compile, sync_every=args.sync_every)

    try:  # every stage's settings checked before the data loads
        stage_settings = {stage: settings_of(stage) for stage in args.stages}
    except ValueError as error:  # one line, as argparse says it
        parser.error(str(error))
    work = Path(args.work)
    data = TrainingSet(args.data, args.device)
    trainers = {}
    for stage, settings in stage_settings.items():
        trainer = trainers[stage] = train(settings, data, checkpoint=work / f"checkpoint-stage{stage}.pt")
        last = trainer.history[-50:]
        print(f"stage {stage}: {trainer.step} steps, {trainer.seconds:.1f} s this run, {settings.batch} images/step; "
              f"loss {trainer.history[0]['loss']:.4f} at step 1 -> {sum(r['loss'] for r in last) / len(last):.4f} "
              f"(mean of the last {len(last)} steps)", flush=True)
    plot_losses({f"stage {k}": t.history for k, t in trainers.items()}, work / "loss.png")
    command = args.command or "python -m diffusion_post.training.train " + " ".join(argv if argv is not None else sys.argv[1:])
    shipped = write_weights_folder(trainers, data, Path(args.weights), command, work / "loss.png")
    print(json.dumps({k: v for k, v in shipped.items() if k != "stages"}, indent=1))
    if args.parts:
        written = write_parts(Path(args.weights), Path(args.parts))
        print(f"{len(written)} files for the return trip in {args.parts}: " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()
