"""Checkpoints: Hugging Face safetensors in and out, and our own Orbax-based format."""

from autoglm_jax.checkpoint.api import Model, abstract_params, export_hf, init, load, save
from autoglm_jax.checkpoint.safetensors_io import CheckpointError

__all__ = ["CheckpointError", "Model", "abstract_params", "export_hf", "init", "load", "save"]
