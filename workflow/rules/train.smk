# The `trained` backend's data set and training run (issue 10). Not part of the default target:
#   snakemake --cores 1 data     captioned 128-px images + caption embeddings, one .npz and its manifest (CPU, ~2 min)
#   snakemake --cores 1 train    both stages on a CUDA GPU, then weights/trained/ (the folder the backend loads)
# Settings: the `training` section of config.yaml (all optional; defaults below).
import sys

from diffusion_post.training import DATA_VERSION, EMOJIBASE  # torch-free

TRAINING = {
    # data
    "emoji_limit": None, "crops_per_photo": 16, "data_seed": 0,
    # training: sized for one lent H200 (see scripts/device_train.sh); steps stop early when a budget is spent
    "preset": "device", "steps_1": 6000, "steps_2": 6000, "batch_1": 256, "batch_2": 128,
    "size_1": None, "size_2": None, "budget_1": None, "budget_2": None, "lr": 2e-4, "seed": 0,
} | config.get("training", {})
TRAIN_DATA = f"results/train/data-v{DATA_VERSION}.npz"
NPM_CACHE = Path(config["backend"].get("cache_dir", ".cache")) / "npm"
TRAINING_CODE = code("training/data.py", "training/models.py", "training/losses.py", "training/train.py",
                     "training/ship.py", "schedule.py")


rule emojibase:
    """Emoji labels and keywords (npm emojibase-data, MIT), fetched once."""
    output:
        str(NPM_CACHE / f"{EMOJIBASE.replace('@', '-')}.tgz"),
    run:
        from diffusion_post.training.data import npm_pack

        npm_pack(EMOJIBASE, Path(output[0]).parent)


rule data:
    """The training set of the trained backend: Noto emoji and sample-photo crops, captioned and embedded."""
    input:
        keywords=rules.emojibase.output[0],
        code=code("training/data.py", "data/emoji_set.py"),
    output:
        npz=TRAIN_DATA,
        manifest=TRAIN_DATA.replace(".npz", ".json"),
    params:
        data={k: TRAINING[k] for k in ("emoji_limit", "crops_per_photo", "data_seed")},
    run:
        from diffusion_post.backends.image_set import minilm_encoder
        from diffusion_post.training.data import build_dataset

        build_dataset(output.npz, input.keywords, minilm_encoder, emoji_limit=params.data["emoji_limit"],
                      crops_per_photo=params.data["crops_per_photo"], seed=params.data["data_seed"])


def train_arguments(settings):
    flags = [f"--preset {settings['preset']}", f"--lr {settings['lr']}", f"--seed {settings['seed']}"]
    for key in ("steps", "batch", "size", "budget"):
        for stage in (1, 2):
            if settings[f"{key}_{stage}"] is not None:
                flags.append(f"--{key}-{stage} {settings[f'{key}_{stage}']}")
    return " ".join(flags)


rule train:
    """Both stages (resumable from results/train/), then weights/trained/ with SHIPPED.json and the loss curve."""
    input:
        data=TRAIN_DATA,
        code=TRAINING_CODE,
    output:
        "weights/trained/SHIPPED.json",
    params:
        arguments=train_arguments({k: v for k, v in TRAINING.items() if k not in ("emoji_limit", "crops_per_photo", "data_seed")}),
    resources:
        gpu=1,
    shell:
        f"{sys.executable} -m diffusion_post.training.train --data {{input.data}} --work results/train "
        "--weights weights/trained {params.arguments}"
