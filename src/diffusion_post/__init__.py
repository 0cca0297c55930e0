"""Sampling techniques of "Implementing Diffusion Models" on one denoiser interface."""

__version__ = "0.1.0"
