"""autoglm-jax: AutoGLM-Phone-9B (GLM-4.1V) in JAX/Flax.

    import autoglm_jax as ag
    m = ag.load("path/to/hf_dir")                      # glm, glm4 (more model types to come)
    logits = m.module.apply({"params": m.params}, input_ids)
"""

from autoglm_jax.checkpoint import (CheckpointError, Model, abstract_params, export_hf, init,
                                    load, save)
from autoglm_jax.config import ConfigError, ModelConfig, TextConfig, load_config
from autoglm_jax.nn.attention import DenseCausal
from autoglm_jax.nn.glm import GlmDecoder
from autoglm_jax.sharding import RULES, make_mesh, param_shardings, per_device_bytes

__version__ = "0.1.0"

__all__ = [
    "RULES", "CheckpointError", "ConfigError", "DenseCausal", "GlmDecoder", "Model",
    "ModelConfig", "TextConfig", "abstract_params", "export_hf", "init", "load", "load_config",
    "make_mesh", "param_shardings", "per_device_bytes", "save",
]
