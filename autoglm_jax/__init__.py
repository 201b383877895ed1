"""autoglm-jax: AutoGLM-Phone-9B (GLM-4.1V) in JAX/Flax, with a Whisper audio stack fused by
cross-modal gated attention.

    import autoglm_jax as ag
    m = ag.load("path/to/hf_dir")          # glm, glm4, glm4v, whisper, vit, or an ag.save dir
    logits = m.module.apply({"params": m.params}, input_ids)
    engine = ag.Engine(m, ag.EngineConfig(max_num_seqs=64))
    outs = engine.generate(["Hello"], ag.SamplingParams(max_tokens=32, temperature=0.0))
"""

from autoglm_jax._version import __version__  # noqa: F401  (the package version)
from autoglm_jax.checkpoint import (
    CheckpointError,
    Model,
    abstract_params,
    export_hf,
    init,
    load,
    save,
)
from autoglm_jax.config import (
    AudioConfig,
    ConfigError,
    FusionConfig,
    ModelConfig,
    TextConfig,
    VisionConfig,
    ViTConfig,
)
from autoglm_jax.engine import Engine, EngineConfig, QueueFullError, RequestOutput, SamplingParams
from autoglm_jax.families import FAMILIES, Family, count_params_by_stack, load_config
from autoglm_jax.nn.attention import DenseCausal
from autoglm_jax.nn.audio import WhisperEncoder
from autoglm_jax.nn.fusion import Memory, MemoryKV
from autoglm_jax.nn.glm import GlmDecoder
from autoglm_jax.nn.model import AutoGLM, Glm4vModel, encode_memory, memory_kv
from autoglm_jax.nn.vision import Glm4vVisionTower
from autoglm_jax.nn.vit import ViTEncoder
from autoglm_jax.sharding import RULES, make_mesh, param_shardings, per_device_bytes

__all__ = [
    "FAMILIES",
    "RULES",
    "AudioConfig",
    "AutoGLM",
    "CheckpointError",
    "ConfigError",
    "DenseCausal",
    "Engine",
    "EngineConfig",
    "Family",
    "FusionConfig",
    "Glm4vModel",
    "Glm4vVisionTower",
    "GlmDecoder",
    "Memory",
    "MemoryKV",
    "Model",
    "ModelConfig",
    "QueueFullError",
    "RequestOutput",
    "SamplingParams",
    "TextConfig",
    "ViTConfig",
    "ViTEncoder",
    "VisionConfig",
    "WhisperEncoder",
    "abstract_params",
    "count_params_by_stack",
    "encode_memory",
    "export_hf",
    "init",
    "load",
    "load_config",
    "make_mesh",
    "memory_kv",
    "param_shardings",
    "per_device_bytes",
    "save",
]
