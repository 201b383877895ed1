"""Architectures that `ag.load` understands: config reader, module builder, tensor maps."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from autoglm_jax.checkpoint import glm_keys
from autoglm_jax.checkpoint.keymap import TensorMap
from autoglm_jax.config import ModelConfig, text_config_from_hf, text_config_to_hf


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    config_from_hf: Callable[[dict[str, Any], str], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    build: Callable[[ModelConfig], nn.Module]
    tensor_maps: Callable[[ModelConfig], list[TensorMap]]
    # Dummy positional inputs for `module.init` (shapes only matter for eval_shape).
    init_args: Callable[[ModelConfig], tuple[Any, ...]]
    # HF keys that belong to parts we do not model (e.g. a Whisper decoder).
    ignored: Callable[[str, ModelConfig], bool] = lambda key, cfg: False


def _glm_build(cfg: ModelConfig) -> nn.Module:
    from autoglm_jax.nn.glm import GlmDecoder
    return GlmDecoder(cfg.text)


def _glm_ignored(key: str, cfg: ModelConfig) -> bool:
    if key.endswith("rotary_emb.inv_freq"):
        return True
    return cfg.text.tie_word_embeddings and key == "lm_head.weight"


def _glm_arch(model_type: str) -> Architecture:
    return Architecture(
        name=model_type,
        config_from_hf=lambda d, src: ModelConfig(model_type=d["model_type"],
                                                  text=text_config_from_hf(d, source=src)),
        config_to_hf=lambda cfg: text_config_to_hf(cfg.text),
        build=_glm_build,
        tensor_maps=lambda cfg: glm_keys.hf_tensor_maps(cfg.text),
        init_args=lambda cfg: (jnp.zeros((1, 2), jnp.int32),),
        ignored=_glm_ignored,
    )


ARCHITECTURES: dict[str, Architecture] = {
    "glm": _glm_arch("glm"),
    "glm4": _glm_arch("glm4"),
}


def register(arch: Architecture) -> None:
    ARCHITECTURES[arch.name] = arch


def get_architecture(model_type: str | None, source: str) -> Architecture:
    from autoglm_jax.config import ConfigError
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"{source}: unsupported model_type {model_type!r} "
                          f"(supported: {sorted(ARCHITECTURES)})")
    return ARCHITECTURES[model_type]
