"""Does each figure show its technique? Builds the affected figures and prints one measure per figure.

Measures (RMS distances in [-1, 1] pixel units, 64 px):
  sdedit / text edit  distance of each edit to the input, per i_start (target: >= 0.8 at the first, <= 0.15 at
                      the last, falling at >= 4 of 5 steps); text edits also: rank of the edit prompt's caption
                      in the exact posterior of the most edited image (uniform prior, t = 100; target: top 5)
  samples             mean pairwise distance (target >= 0.3), each sample's distance to its nearest set image
                      (target >= 0.05: no sample is a set image)
  inpainting          hole vs original (target >= 0.3), outside vs original (0), seam score = mean |gradient|
                      across the hole's border / mean |gradient| of the image (target <= 2)
  block-grid score    of each local output: mean |gradient| across the 8-px block edges / elsewhere (1: no grid)
  one-step            PSNR of each estimate against the input (target at t = 250: >= 25 dB)
  anagram / hybrid    rank of each view's prompt caption in the exact posterior of that view (the view of an
                      anagram; the low-pass / high-pass part of a hybrid, compared with the set filtered alike);
                      an anagram's view is legible when that rank is in the top 5 (no target: counted apart)

  python bench/bench_quality.py                      # the shipped config
  python bench/bench_quality.py --user-photo         # the test image replaced by a photo the project does not ship
  python bench/bench_quality.py --photo my_photo.jpg --figures sdedit_test_image   # any photo, some figures only
  python bench/bench_quality.py --seeds 100 101 102  # each seed, then how many seeds each figure passed
  python bench/bench_quality.py --figures anagram_citadel_castle --denoiser exact   # another denoiser
"""

import argparse
import contextlib
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusion_post import config as post_config
from diffusion_post.backends import load_backend
from diffusion_post.build import make_result, write_builtin_input
from diffusion_post.figures import components
from diffusion_post.images import load_result
from diffusion_post.views import get_view

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("one_step", "sample", "sdedit", "inpaint", "anagram", "hybrid")
LEGIBLE = 5  # a view of an anagram shows its prompt when the prompt's caption ranks in the top 5 of its posterior


def rms(a, b) -> float:
    return (a - b).square().mean().sqrt().item()


def psnr(a, b) -> float:
    return 10 * math.log10(4 / (a - b).square().mean().item())  # data range 2


def abs_gradients(x) -> tuple:
    """|x(k) - x(k - 1)| down and across x (3, H, W), averaged over channels: (H - 1, W) and (H, W - 1)."""
    return (x[:, 1:] - x[:, :-1]).abs().mean(0), (x[:, :, 1:] - x[:, :, :-1]).abs().mean(0)


def grid_score(x, block: int = 8) -> float:
    """Mean |gradient| across the local denoiser's block edges (every `block` px) / the mean |gradient| across the
    other pixel pairs, of x (3, H, W): about 1 for an image without a block grid."""
    gy, gx = abs_gradients(x)
    edge = torch.arange(1, x.shape[-1]) % block == 0  # pair (k - 1, k) straddles an edge
    across = torch.cat([gy[edge].flatten(), gx[:, edge].flatten()]).mean()
    within = torch.cat([gy[~edge].flatten(), gx[:, ~edge].flatten()]).mean()
    return (across / within).item()


def user_photo(path: Path) -> Path:
    """A photo the project does not ship: scikit-learn's flower.jpg (kept out of the photo crops), 640 x 427."""
    from diffusion_post.data.photos import source_image

    image = source_image("sklearn", "datasets/images", "flower.jpg")
    if image is None:
        raise SystemExit("--user-photo needs scikit-learn (its flower.jpg)")
    image.save(path)
    return path


class Judge:
    """The exact posterior over the set at t = 100 with a uniform prior: which set images an output looks like.
    Always an ideal backend's set: the config's own, or the shipped config's where another backend made the figures
    (the trained one), with the config's inputs and cache."""

    def __init__(self, cfg: dict):
        ideal = cfg["backend"]
        if ideal["name"] != "ideal":
            ideal = {**post_config.load(ROOT / "config.yaml")["backend"], "cache_dir": ideal["cache_dir"]}
            if ideal["name"] != "ideal":
                sys.exit(f"the judge needs the ideal backend's set, and {ROOT / 'config.yaml'} names the "
                         f"{ideal['name']} backend: keep config.yaml as shipped, give the other backend's config by --config")
        backend = post_config.figure_backend({**cfg, "backend": ideal}, {"technique": "sample", "denoiser": "exact"},
                                             "inputs_tmp")
        self.cascade = load_backend(backend)
        S = self.cascade.stage_1.set
        self.set, self.y = S, S.y_64.view(-1, 3, 64, 64).float()
        self.abar = self.cascade.stage_1.alphas_cumprod[100].item()

    def nearest(self, x) -> float:
        """RMS distance of x (3, 64, 64) to its nearest set image."""
        return ((self.y - x).square().mean((1, 2, 3)).min().sqrt()).item()

    def rank(self, x, prompt: str, filt=lambda y: y) -> tuple[int, str]:
        """Rank (1 = first) of the prompt's best caption in the posterior of filt(x) among filt(set), and the
        posterior's top caption."""
        target = self.set.log_weights(self.cascade.embed([prompt])).argmax().item()
        fx, fy = filt(x[None].float()), filt(self.y)
        logits = -(fx - math.sqrt(self.abar) * fy).square().sum((1, 2, 3)) / (2 * (1 - self.abar))
        order = logits.argsort(descending=True)
        return (order == target).nonzero().item() + 1, self.set.captions[order[0]]


def measure(name: str, spec: dict, result: dict, source: dict | None, judge: Judge) -> list[str]:
    images = result["images"]
    technique = spec["technique"]
    if technique == "one_step":
        original = source["original"][0]
        lines = []
        for t, x in zip(source["timesteps"].tolist(), images):
            p = psnr(x, original)
            lines.append(f"PSNR at t={t}: {p:.1f} dB" + ((" PASS" if p >= 25 else " FAIL") if t == 250 else ""))
        return lines
    if technique == "sdedit":
        x0, edits = images[-1], images[:-1]
        d = [rms(e, x0) for e in edits]
        falls = sum(b < a for a, b in zip(d, d[1:]))
        ok = d[0] >= 0.8 and d[-1] <= 0.15 and falls >= len(d) - 2
        lines = ["distance to input per i_start " + " ".join(f"{v:.3f}" for v in d)
                 + f"  (falls {falls}/{len(d) - 1}) {'PASS' if ok else 'FAIL'}",
                 "block-grid score per i_start " + " ".join(f"{grid_score(e):.2f}" for e in edits)]
        if name.startswith("text_edit"):
            r, top = judge.rank(edits[0], spec["prompt"])
            lines.append(f"prompt caption rank at i_start {spec['i_starts'][0]}: {r} ({'top 5' if r <= 5 else 'not top 5'}; posterior's top: {top})")
        return lines
    if technique == "sample":
        pairs = [rms(a, b) for a, b in itertools.combinations(images, 2)]
        near = [judge.nearest(x) for x in images]
        ok = (sum(pairs) / len(pairs) >= 0.3) and min(near) >= 0.05
        return [f"mean pairwise {sum(pairs) / len(pairs):.3f}, nearest set image " + " ".join(f"{v:.3f}" for v in near)
                + f" {'PASS' if ok else 'FAIL'}", "block-grid score " + " ".join(f"{grid_score(x):.2f}" for x in images)]
    if technique == "inpaint":
        x0, result_image, mask = images[0], images[-1], result["mask"][0, 0].bool()
        hole = (result_image - x0)[:, mask].square().mean().sqrt().item()
        outside = (result_image - x0)[:, ~mask].abs().max().item()
        gy, gx = abs_gradients(result_image)
        across_y, across_x = mask[1:] != mask[:-1], mask[:, 1:] != mask[:, :-1]
        seam = torch.cat([gy[across_y], gx[across_x]]).mean().item() / torch.cat([gy.flatten(), gx.flatten()]).mean().item()
        ok = hole >= 0.3 and outside < 1e-5 and seam <= 2
        return [f"hole vs original {hole:.3f}, outside {outside:.1e}, seam score {seam:.2f} {'PASS' if ok else 'FAIL'}",
                f"block-grid score {grid_score(result_image):.2f}"]
    if technique == "anagram":
        samples = result["samples"]
        lines, legible = [], []
        for view_name, prompt in zip(spec["views"], spec["prompts"]):
            ranks = [judge.rank(get_view(view_name).view(x), prompt) for x in samples]
            legible += [r <= LEGIBLE for r, _ in ranks]
            lines.append(f"view {view_name} / {prompt!r}: rank " + ", ".join(f"{r} (top: {top})" for r, top in ranks))
        return [f"legible views (prompt's caption in the posterior's top {LEGIBLE}): {sum(legible)}/{len(legible)}", *lines]
    if technique == "hybrid":
        parts = components(spec)
        lines = []
        for k, (f, prompt) in enumerate(zip(parts, spec["prompts"])):
            ranks = [judge.rank(x, prompt, filt=f) for x in images]
            lines.append(f"component {k} / {prompt!r}: rank " + ", ".join(f"{r} (top: {top})" for r, top in ranks))
        return lines
    return []


def measure_figures(cfg: dict, wanted: list[str] | None, out: Path | None) -> dict[str, bool]:
    """Build the wanted figures (and the figures they start from) of `cfg` in a temporary folder, print one
    measure per figure, and return which of them met their targets (figures with targets only)."""
    verdicts = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        for key, value in cfg["inputs"].items():
            if value.startswith(post_config.BUILTIN):
                write_builtin_input(value[len(post_config.BUILTIN):], post_config.input_path(cfg, key, "inputs_tmp"))
        table = post_config.figure_table(cfg)
        specs = {name: post_config.resolve(cfg, name) for name in table}
        wanted = wanted or [n for n, s in specs.items() if s["technique"] in MEASURED]
        todo = [name for name in specs if name in wanted or any(specs[w].get("source") == name for w in wanted)]
        judge = Judge(cfg)
        print(f"{'figure':<28}{'denoiser':<9}{'s':>6}  measure")
        for name in todo:
            spec = specs[name]
            inputs = {"image": post_config.input_path(cfg, spec["image"], "inputs_tmp")} if "image" in spec else {}
            source = f"raw/{spec['source']}.safetensors" if "source" in spec else None
            start = time.perf_counter()
            make_result(name, spec, post_config.figure_backend(cfg, spec, "inputs_tmp"), inputs, source, f"raw/{name}.safetensors")
            seconds = time.perf_counter() - start
            if name not in wanted:
                continue
            result = load_result(f"raw/{name}.safetensors")[0]
            if out:
                from diffusion_post import layout

                layout.figure(f"raw/{name}.safetensors", out / f"{name}.png")
            lines = measure(name, spec, result, load_result(source)[0] if source else None, judge) or ["(not measured)"]
            print(f"{name:<28}{spec.get('denoiser', '-'):<9}{seconds:6.1f}  {lines[0]}")
            for line in lines[1:]:
                print(f"{'':<43}{line}")
            sys.stdout.flush()
            verdict = [line.endswith("PASS") for line in lines if line.endswith(("PASS", "FAIL"))]
            if verdict:
                verdicts[name] = verdict[0]
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--figures", nargs="*", help="figure names (default: every measured figure)")
    photo = parser.add_mutually_exclusive_group()
    photo.add_argument("--user-photo", action="store_true", help="replace the test image by a photo the project does not ship")
    photo.add_argument("--photo", help="replace the test image by this image file (its name in words is its caption)")
    parser.add_argument("--seeds", type=int, nargs="+", help="measure with each of these seeds (default: the config's) "
                        "and print how many seeds each figure passed")
    parser.add_argument("--out", help="also lay out each measured figure as OUT/<figure>.png (the last seed's)")
    parser.add_argument("--local", type=json.loads, default={}, help="override backend/local settings, as JSON")
    parser.add_argument("--denoiser", choices=["exact", "local"], help="make every measured figure (and its stage II) "
                        "with this denoiser of the ideal backend")
    args = parser.parse_args()
    if args.photo and not Path(args.photo).is_file():
        parser.error(f"--photo {args.photo}: no such file")
    cfg = post_config.load(args.config)
    cfg["backend"]["local"] = {**cfg["backend"].get("local", {}), **args.local}
    if args.denoiser:
        for name, (_, own) in post_config.figure_table(cfg).items():
            if not args.figures or name in args.figures:
                own["denoiser"] = args.denoiser
    cfg["backend"]["cache_dir"] = str((Path(args.config).resolve().parent / cfg["backend"].get("cache_dir", ".cache")))
    out = Path(args.out).resolve() if args.out else None
    with tempfile.TemporaryDirectory() as keep:
        if args.user_photo:
            cfg["inputs"]["test_image"] = str(user_photo(Path(keep) / "flower.jpg"))
        elif args.photo:
            cfg["inputs"]["test_image"] = str(Path(args.photo).resolve())
        seeds = args.seeds or [cfg["seed"]]
        passed: dict[str, list[bool]] = {}
        for seed in seeds:
            if len(seeds) > 1:
                print(f"\nseed {seed}")
            for name, ok in measure_figures({**cfg, "seed": seed}, args.figures, out).items():
                passed.setdefault(name, []).append(ok)
    if len(seeds) > 1:
        print(f"\nfigures that met their targets, of {len(seeds)} seeds ({' '.join(map(str, seeds))})")
        for name, oks in passed.items():
            print(f"{name:<28}{sum(oks)}/{len(oks)}")
        print(f"{'all':<28}{sum(map(sum, passed.values()))}/{sum(map(len, passed.values()))}")


if __name__ == "__main__":
    main()
