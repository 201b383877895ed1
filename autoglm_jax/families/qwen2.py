"""Qwen2 text decoders (`model_type` qwen2, Qwen2ForCausalLM) on the GLM decoder: its
config.json reader and writer, and the registry entry. Qwen2 is the GLM layout with full
rotary, q/k/v biases and no o_proj bias; the key map (`qwen2_keys`) absorbs the two
differences in tensor layout (rotate_half pairs, separate gate and up projections). The
fields it shares with other Llama-style configs are read and written by `hf_decoder_config`."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from autoglm_jax.config import ConfigError, ModelConfig, TextConfig
from autoglm_jax.families import hf_decoder_config, qwen2_keys
from autoglm_jax.families.family import Family, hf_architecture
from autoglm_jax.families.glm import check_hf_exportable, ignored_glm_key
from autoglm_jax.nn.glm import GlmDecoder


def text_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> TextConfig:
    """TextConfig from a Qwen2 config.json dict; defaults follow transformers' Qwen2Config.
    Only default rope (Qwen2's rotary ignores partial_rotary_factor: it always rotates head_dim
    dims); sliding-window layers are refused."""
    hf_decoder_config.check_required_and_silu(cfg, source)
    hf_decoder_config.refuse_fields(
        cfg, source, [("use_sliding_window", "sliding-window attention is not supported")]
    )
    layer_types = cfg.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ConfigError(
            f"{source}: field `layer_types`: only 'full_attention' layers are supported, "
            f"got {sorted(set(layer_types))}"
        )
    return hf_decoder_config.full_rotary_text_config(
        cfg,
        source,
        family="qwen2",
        attention_bias=True,
        max_position_embeddings=32768,
        eos_token_id=None,
    )


def check_qwen2(config: ModelConfig, source: str) -> None:
    """A qwen2 model is the GLM decoder with full 1D rotary, q/k/v biases, no sandwich norms."""
    hf_decoder_config.check_full_rotary(config, source, family="qwen2", attention_bias=True)


def text_config_to_hf(cfg: TextConfig) -> dict[str, Any]:
    """A config.json dict for Qwen2ForCausalLM (transformers 5 spelling plus top-level
    rope_theta as on the hub)."""
    check_hf_exportable(cfg)
    out = hf_decoder_config.config_to_hf(
        cfg,
        model_type="qwen2",
        architecture="Qwen2ForCausalLM",
        extra={"use_sliding_window": False},
    )
    out["pad_token_id"] = cfg.pad_token_id
    out["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_ids:
        out["eos_token_id"] = list(cfg.eos_token_ids)
    return out


QWEN2 = Family(
    name="qwen2",
    config_from_hf=lambda raw, source: ModelConfig(
        model_type="qwen2",
        text=text_config_from_hf(raw, source=source),
        hf_architecture=hf_architecture(raw),
    ),
    config_to_hf=lambda config: text_config_to_hf(config.text),
    build=lambda config, dot_general=None: GlmDecoder(config.text, dot_general),
    tensor_maps=lambda config: qwen2_keys.hf_tensor_maps(config.text),
    example_inputs=lambda config: (jnp.zeros((1, 2), jnp.int32),),
    stacks=("text",),
    ignored=ignored_glm_key,
    decoder_path=(),
    param_stacks={"": "text"},
    check=check_qwen2,
)
