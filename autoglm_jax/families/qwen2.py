"""Qwen2 text decoders (`model_type` qwen2, Qwen2ForCausalLM) on the GLM decoder: its
config.json reader and writer, and the registry entry. Qwen2 is the GLM layout with full
rotary, q/k/v biases and no o_proj bias; the key map (`qwen2_keys`) absorbs the two
differences in tensor layout (rotate_half pairs, separate gate and up projections)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from autoglm_jax.config import ConfigError, ModelConfig, TextConfig
from autoglm_jax.families import qwen2_keys
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
    """rope_theta from `rope_parameters` (transformers 5) or the hub's top level; only default
    rope (Qwen2's rotary ignores partial_rotary_factor: it always rotates head_dim dims)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConfigError(f"{source}: `rope_parameters`/`rope_scaling` must be objects")
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(
            f"{source}: field `rope_type`: unsupported rope type {rope_type!r} for qwen2 "
            "(supported: ['default'])"
        )
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise ConfigError(f"{source}: field `rope_theta`: expected a number, got {theta!r}")
    return float(theta)


def text_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> TextConfig:
    """TextConfig from a Qwen2 config.json dict; defaults follow transformers' Qwen2Config."""
    for key in _REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{source}: missing required field `{key}`")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(
            f"{source}: field `hidden_act`: only 'silu' is supported, got {cfg['hidden_act']!r}"
        )
    if cfg.get("use_sliding_window", False):
        raise ConfigError(
            f"{source}: field `use_sliding_window`: sliding-window attention is not supported"
        )
    layer_types = cfg.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ConfigError(
            f"{source}: field `layer_types`: only 'full_attention' layers are supported, "
            f"got {sorted(set(layer_types))}"
        )
    heads = cfg["num_attention_heads"]
    # Qwen2Attention and its rotary read config.head_dim when present, else hidden // heads.
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
            max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
            attention_bias=True,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_ids=_as_tuple(cfg.get("eos_token_id")),
            pad_token_id=cfg.get("pad_token_id"),
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("TextConfig", source, 1)) from None


def check_qwen2(config: ModelConfig, source: str) -> None:
    """A qwen2 model is the GLM decoder with full 1D rotary, q/k/v biases, no sandwich norms."""
    c = config.text
    for field, ok, want in (
        ("variant", c.variant == "glm", "'glm'"),
        ("attention_bias", c.attention_bias, "true"),
        ("partial_rotary_factor", c.partial_rotary_factor == 1.0, "1.0"),
        ("mrope_section", c.mrope_section is None, "none"),
    ):
        if not ok:
            raise ConfigError(
                f"{source}: field `text.{field}`: a qwen2 model needs {want}, "
                f"got {getattr(c, field)!r}"
            )


def text_config_to_hf(cfg: TextConfig) -> dict[str, Any]:
    """A config.json dict for Qwen2ForCausalLM (transformers 5 spelling plus top-level
    rope_theta as on the hub)."""
    check_hf_exportable(cfg)
    out: dict[str, Any] = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
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
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "use_sliding_window": False,
        "torch_dtype": cfg.param_dtype,
        "pad_token_id": cfg.pad_token_id,
    }
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
