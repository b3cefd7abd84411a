"""Latent Studio: a desktop image studio for latent diffusion models, offline."""

__version__ = "0.1.0"
APP_NAME = "Latent Studio"
