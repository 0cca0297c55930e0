"""The `trained` backend's own models: its data set (data.py), the IF-shaped UNet pair (models.py), the hybrid
loss (losses.py), the resumable training loop (train.py) and the shipped-weights folder (ship.py). Issue 10."""

# Read by workflow/rules/train.smk while Snakemake parses the Snakefile, so kept here, torch-free.
DATA_VERSION = 2  # bump when the data set changes; recorded with the weights made from it
EMOJIBASE = "emojibase-data@17.0.0"  # npm package of emoji labels and keywords (MIT)
