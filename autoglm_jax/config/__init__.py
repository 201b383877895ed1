"""Configuration: frozen dataclasses, Hugging Face config.json readers and presets."""

from autoglm_jax.config._common import ConfigError
from autoglm_jax.config.audio import AudioConfig, audio_config_from_hf
from autoglm_jax.config.fusion import FusionConfig
from autoglm_jax.config.model import (MODEL_TYPES, ModelConfig, glm4v_config_from_hf,
                                      glm4v_config_to_hf, load_config, model_config_from_hf,
                                      preset_names, read_json)
from autoglm_jax.config.text import TextConfig, text_config_from_hf, text_config_to_hf
from autoglm_jax.config.vision import VisionConfig, vision_config_from_hf, vision_config_to_hf
from autoglm_jax.config.vit import ViTConfig, vit_config_from_hf

__all__ = [
    "MODEL_TYPES", "AudioConfig", "ConfigError", "FusionConfig", "ModelConfig", "TextConfig",
    "ViTConfig", "VisionConfig", "audio_config_from_hf", "glm4v_config_from_hf",
    "glm4v_config_to_hf", "load_config", "model_config_from_hf", "preset_names", "read_json",
    "text_config_from_hf", "text_config_to_hf", "vision_config_from_hf", "vision_config_to_hf",
    "vit_config_from_hf",
]
