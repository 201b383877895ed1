"""The GLM text decoders: `model_type` glm (GLM-4-9B, GlmForCausalLM) and glm4 (GLM-4-0414,
Glm4ForCausalLM, with sandwich norms). Their config.json reader and writer (also used for the
text part of glm4v), tensor maps, and registry entries."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from autoglm_jax.config import ConfigError, ModelConfig, TextConfig
from autoglm_jax.families import glm_keys, hf_decoder_config
from autoglm_jax.families.family import Family, hf_architecture
from autoglm_jax.nn.glm import GlmDecoder

# Rope types we implement. "mrope" is the old Qwen2-VL spelling of default rope + sections.
_SUPPORTED_ROPE_TYPES = ("default", "mrope")


def _rope_fields(cfg: dict[str, Any], source: str, default_partial: float) -> dict[str, Any]:
    """Read rope settings in both spellings: hub files (top-level rope_theta,
    partial_rotary_factor, rope_scaling) and transformers 5 (`rope_parameters`)."""
    rope = hf_decoder_config.rope_settings(cfg, source, supported=_SUPPORTED_ROPE_TYPES)
    mrope = rope.get("mrope_section")
    return dict(
        rope_theta=hf_decoder_config.rope_number(rope, cfg, "rope_theta", 10000.0, source),
        partial_rotary_factor=hf_decoder_config.rope_number(
            rope, cfg, "partial_rotary_factor", default_partial, source
        ),
        mrope_section=tuple(mrope) if mrope is not None else None,
    )


def text_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> TextConfig:
    """TextConfig from a Hugging Face config.json dict of model type glm, glm4 or glm4v.

    Defaults follow the installed transformers classes (GlmConfig, Glm4Config, Glm4vTextConfig).
    """
    model_type = cfg.get("model_type")
    top = cfg
    if model_type == "glm4v":
        text = cfg.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError(f"{source}: glm4v config has no `text_config` object")
        cfg, source = text, f"{source}:text_config"
    elif model_type not in ("glm", "glm4"):
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} for the GLM decoder "
            "(supported: 'glm', 'glm4', 'glm4v')"
        )
    hf_decoder_config.check_required_and_silu(cfg, source)
    heads = cfg["num_attention_heads"]
    if model_type == "glm4v":
        # Glm4vTextAttention derives its head size itself (hidden_size // heads); a head_dim in
        # config.json reaches only the rotary embedding, which rotates
        # int(head_dim * partial_rotary_factor) of each head's dimensions.
        head_dim = cfg["hidden_size"] // heads
        rope = _rope_fields(cfg, source, default_partial=1.0)
        rotary = int((cfg.get("head_dim") or head_dim) * rope["partial_rotary_factor"])
        if not 0 < rotary <= head_dim or rotary % 2:
            raise ConfigError(
                f"{source}: fields `head_dim` and `partial_rotary_factor` give a "
                f"rotary size of {rotary}, which must be even and at most the "
                f"attention head size hidden_size // num_attention_heads = "
                f"{head_dim}"
            )
        rope["partial_rotary_factor"] = rotary / head_dim
        variant, bias = "glm4", True
        if rope["mrope_section"] is None:
            rope["mrope_section"] = (8, 12, 12)  # Glm4vTextRotaryEmbedding's default
        tie = bool(top.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False)))
    else:
        head_dim = cfg.get("head_dim") or 128  # GlmConfig/Glm4Config default, not d/heads
        rope = _rope_fields(cfg, source, default_partial=0.5)
        variant = model_type
        bias = bool(cfg.get("attention_bias", True))
        tie = bool(cfg.get("tie_word_embeddings", False))
    eos = cfg.get("eos_token_id", top.get("eos_token_id"))
    if eos is None and model_type == "glm":
        eos = [151329, 151336, 151338]
    default_eps = 1e-5 if model_type == "glm4v" else 1.5625e-07
    return hf_decoder_config.text_config(
        cfg,
        source,
        head_dim=int(head_dim),
        variant=variant,
        rms_norm_eps=float(cfg.get("rms_norm_eps", default_eps)),
        max_position_embeddings=int(
            cfg.get("max_position_embeddings", 32768 if model_type == "glm4v" else 131072)
        ),
        attention_bias=bias,
        tie_word_embeddings=tie,
        eos_token_ids=hf_decoder_config.int_tuple(eos),
        **rope,
    )


def check_hf_exportable(cfg: TextConfig) -> None:
    """Pruned (per-layer widths) and quantized decoders have no transformers layout."""
    if cfg.layer_ffw_dims is not None or cfg.layer_num_heads is not None:
        raise ConfigError(
            "TextConfig: per-layer widths (a pruned decoder) have no Hugging Face "
            "layout; save the model with ag.save"
        )
    if cfg.quant is not None:
        raise ConfigError(
            "TextConfig: quantized weights have no Hugging Face layout; save the model with ag.save"
        )


def text_config_to_hf(cfg: TextConfig) -> dict[str, Any]:
    """A config.json dict (transformers 5 spelling plus the hub's top-level fields) for
    GlmForCausalLM / Glm4ForCausalLM."""
    if cfg.mrope_section is not None:
        raise ConfigError("TextConfig with mrope_section exports as part of a glm4v model")
    check_hf_exportable(cfg)
    out = hf_decoder_config.config_to_hf(
        cfg,
        model_type=cfg.variant,
        architecture="GlmForCausalLM" if cfg.variant == "glm" else "Glm4ForCausalLM",
        biases={"attention_bias": cfg.attention_bias},
        rope={"partial_rotary_factor": cfg.partial_rotary_factor},
    )
    if cfg.eos_token_ids:
        out["eos_token_id"] = list(cfg.eos_token_ids)
    # Always written: transformers' GlmConfig defaults a missing pad id to 151329, which is out
    # of range for small vocabularies.
    out["pad_token_id"] = cfg.pad_token_id
    return out


def ignored_glm_key(key: str, config: ModelConfig) -> bool:
    """Rotary tables, and a tied model's lm_head copy, are not parameters of ours."""
    if key.endswith("rotary_emb.inv_freq"):
        return True
    return config.text.tie_word_embeddings and key == "lm_head.weight"


def _glm_family(name: str) -> Family:
    return Family(
        name=name,
        config_from_hf=lambda raw, source: ModelConfig(
            model_type=name,
            text=text_config_from_hf(raw, source=source),
            hf_architecture=hf_architecture(raw),
        ),
        config_to_hf=lambda config: text_config_to_hf(config.text),
        build=lambda config, dot_general=None: GlmDecoder(config.text, dot_general),
        tensor_maps=lambda config: glm_keys.hf_tensor_maps(config.text),
        example_inputs=lambda config: (jnp.zeros((1, 2), jnp.int32),),
        stacks=("text",),
        ignored=ignored_glm_key,
        decoder_path=(),
        param_stacks={"": "text"},
    )


GLM = _glm_family("glm")
GLM4 = _glm_family("glm4")
