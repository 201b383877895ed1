"""Configuration: frozen dataclasses, Hugging Face config.json readers and presets."""

from autoglm_jax.config._common import ConfigError
from autoglm_jax.config.model import (ModelConfig, load_config, model_config_from_hf,
                                      preset_names, read_json)
from autoglm_jax.config.text import TextConfig, text_config_from_hf, text_config_to_hf

__all__ = [
    "ConfigError", "ModelConfig", "TextConfig", "load_config", "model_config_from_hf",
    "preset_names", "read_json", "text_config_from_hf", "text_config_to_hf",
]
