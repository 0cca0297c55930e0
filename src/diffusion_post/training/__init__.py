"""The `trained` backend's own models: its data set (data.py), the IF-shaped UNet pair (models.py), the hybrid
loss (losses.py), the resumable training loop (train.py) and the shipped-weights folder (ship.py). Issue 10."""
