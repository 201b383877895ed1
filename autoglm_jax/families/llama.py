"""Llama text decoders (`model_type` llama, LlamaForCausalLM) on the GLM decoder: its
config.json reader and writer, and the registry entry. Llama is the GLM layout with full
rotary and no biases; the key map (`llama_keys`) absorbs the differences in tensor layout
(rotate_half pairs, separate gate and up projections), as Qwen2's does.

What the GLM decoder does not model is refused by field name: `attention_bias` (Llama's adds an
o_proj bias too, which the decoder lacks), `mlp_bias`, rope scaling (`rope_type` other than
default: llama3, linear, dynamic, yarn, ...) and activations other than silu.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from autoglm_jax.config import ConfigError, ModelConfig, TextConfig
from autoglm_jax.families import llama_keys
from autoglm_jax.families.family import Family, hf_architecture
from autoglm_jax.families.glm import check_hf_exportable, ignored_glm_key
from autoglm_jax.nn.glm import GlmDecoder

_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def _as_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_theta(cfg: dict[str, Any], source: str) -> float:
    """rope_theta from `rope_parameters` (transformers 5) or the hub's top level and
    `rope_scaling`; only default rope (Llama's rotary always rotates all head_dim dims)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConfigError(f"{source}: `rope_parameters`/`rope_scaling` must be objects")
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(
            f"{source}: field `rope_type`: unsupported rope type {rope_type!r} for llama "
            "(supported: ['default'])"
        )
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise ConfigError(f"{source}: field `rope_theta`: expected a number, got {theta!r}")
    return float(theta)


def text_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> TextConfig:
    """TextConfig from a Llama config.json dict; defaults follow transformers' LlamaConfig."""
    for key in _REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{source}: missing required field `{key}`")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(
            f"{source}: field `hidden_act`: only 'silu' is supported, got {cfg['hidden_act']!r}"
        )
    for field, why in (
        ("attention_bias", "q/k/v/o_proj biases (the decoder has no o_proj bias)"),
        ("mlp_bias", "gate/up/down_proj biases"),
    ):
        if cfg.get(field, False):
            raise ConfigError(f"{source}: field `{field}`: {why} are not supported")
    heads = cfg["num_attention_heads"]
    # LlamaAttention and its rotary read config.head_dim when set, else hidden // heads.
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    if head_dim % 2:
        raise ConfigError(f"{source}: field `head_dim`: must be even for rotary, got {head_dim}")
    try:
        return TextConfig(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["hidden_size"]),
            ffw_dim=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(heads),
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            variant="glm",
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(cfg, source),
            partial_rotary_factor=1.0,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            attention_bias=False,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_ids=_as_tuple(cfg.get("eos_token_id", 2)),
            pad_token_id=cfg.get("pad_token_id"),
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("TextConfig", source, 1)) from None


def check_llama(config: ModelConfig, source: str) -> None:
    """A llama model is the GLM decoder with full 1D rotary, no biases, no sandwich norms."""
    c = config.text
    for field, ok, want in (
        ("variant", c.variant == "glm", "'glm'"),
        ("attention_bias", not c.attention_bias, "false"),
        ("partial_rotary_factor", c.partial_rotary_factor == 1.0, "1.0"),
        ("mrope_section", c.mrope_section is None, "none"),
    ):
        if not ok:
            raise ConfigError(
                f"{source}: field `text.{field}`: a llama model needs {want}, "
                f"got {getattr(c, field)!r}"
            )


def text_config_to_hf(cfg: TextConfig) -> dict[str, Any]:
    """A config.json dict for LlamaForCausalLM (transformers 5 spelling plus top-level
    rope_theta as on the hub)."""
    check_hf_exportable(cfg)
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffw_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "torch_dtype": cfg.param_dtype,
        # Written even when empty/None: LlamaConfig would otherwise default them to 2 and None.
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
