"""Llama text decoders (`model_type` llama, LlamaForCausalLM) on the GLM decoder: its
config.json reader and writer, and the registry entry. Llama is the GLM layout with full
rotary and no biases; the key map (`llama_keys`) absorbs the differences in tensor layout
(rotate_half pairs, separate gate and up projections), as Qwen2's does. The fields it shares
with other Llama-style configs are read and written by `hf_decoder_config`.

What the GLM decoder does not model is refused by field name: `attention_bias` (Llama's adds an
o_proj bias too, which the decoder lacks), `mlp_bias`, rope scaling (`rope_type` other than
default: llama3, linear, dynamic, yarn, ...) and activations other than silu.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from autoglm_jax.config import ModelConfig, TextConfig
from autoglm_jax.families import hf_decoder_config, llama_keys
from autoglm_jax.families.family import Family, hf_architecture
from autoglm_jax.families.glm import check_hf_exportable, ignored_glm_key
from autoglm_jax.nn.glm import GlmDecoder

_REFUSED = (
    ("attention_bias", "q/k/v/o_proj biases (the decoder has no o_proj bias) are not supported"),
    ("mlp_bias", "gate/up/down_proj biases are not supported"),
)


def text_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> TextConfig:
    """TextConfig from a Llama config.json dict; defaults follow transformers' LlamaConfig
    (2048 positions, eos 2). Only default rope (Llama's rotary always rotates all head_dim
    dims)."""
    hf_decoder_config.check_required_and_silu(cfg, source)
    hf_decoder_config.refuse_fields(cfg, source, _REFUSED)
    return hf_decoder_config.full_rotary_text_config(
        cfg,
        source,
        family="llama",
        attention_bias=False,
        max_position_embeddings=2048,
        eos_token_id=2,
    )


def check_llama(config: ModelConfig, source: str) -> None:
    """A llama model is the GLM decoder with full 1D rotary, no biases, no sandwich norms."""
    hf_decoder_config.check_full_rotary(config, source, family="llama", attention_bias=False)


def text_config_to_hf(cfg: TextConfig) -> dict[str, Any]:
    """A config.json dict for LlamaForCausalLM (transformers 5 spelling plus top-level
    rope_theta as on the hub)."""
    check_hf_exportable(cfg)
    return {
        **hf_decoder_config.config_to_hf(
            cfg,
            model_type="llama",
            architecture="LlamaForCausalLM",
            biases={"attention_bias": False, "mlp_bias": False},
        ),
        # Written even when empty/None: LlamaConfig would otherwise default them to 1, 2, None.
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) or None,
        "pad_token_id": cfg.pad_token_id,
    }


LLAMA = Family(
    name="llama",
    config_from_hf=lambda raw, source: ModelConfig(
        model_type="llama",
        text=text_config_from_hf(raw, source=source),
        hf_architecture=hf_architecture(raw),
    ),
    config_to_hf=lambda config: text_config_to_hf(config.text),
    build=lambda config, dot_general=None: GlmDecoder(config.text, dot_general),
    tensor_maps=lambda config: llama_keys.hf_tensor_maps(config.text),
    example_inputs=lambda config: (jnp.zeros((1, 2), jnp.int32),),
    stacks=("text",),
    ignored=ignored_glm_key,
    decoder_path=(),
    param_stacks={"": "text"},
    check=check_llama,
)
