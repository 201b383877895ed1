"""Configuration: frozen dataclasses and presets (configs/models/*.toml). Hugging Face
config.json files are read by the model families (`autoglm_jax.families`)."""

from autoglm_jax.config._common import ConfigError
from autoglm_jax.config.audio import AudioConfig
from autoglm_jax.config.fusion import FusionConfig
from autoglm_jax.config.model import ModelConfig, load_config, preset_names, read_json
from autoglm_jax.config.text import TextConfig
from autoglm_jax.config.vision import VisionConfig
from autoglm_jax.config.vit import ViTConfig

__all__ = [
    "AudioConfig",
    "ConfigError",
    "FusionConfig",
    "ModelConfig",
    "TextConfig",
    "ViTConfig",
    "VisionConfig",
    "load_config",
    "preset_names",
    "read_json",
]
