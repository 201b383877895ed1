"""The config.json fields that Hugging Face's Llama-style decoder configs share (LlamaConfig,
Qwen2Config, GlmConfig and kin): reading them into a `TextConfig`, checking a `TextConfig`
against them, and writing them back.

A family module states only what differs: its field defaults, biases, the fields it refuses and
its eos default. `full_rotary_text_config` is the whole reader for decoders that rotate every
head dimension with default rope (qwen2, llama); glm reads its own rope and head size and uses
the smaller pieces (`check_required_and_silu`, `rope_settings`, `text_config`, `config_to_hf`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from autoglm_jax.config import ConfigError, ModelConfig, TextConfig

REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def int_tuple(value: Any) -> tuple[int, ...]:
    """An id field (null, one id or a list of ids, as eos_token_id may be) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def check_required_and_silu(cfg: dict[str, Any], source: str) -> None:
    """The size fields with no default are present, and the activation is silu (GlmMLP's)."""
    for key in REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{source}: missing required field `{key}`")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(
            f"{source}: field `hidden_act`: only 'silu' is supported, got {cfg['hidden_act']!r}"
        )


def refuse_fields(cfg: dict[str, Any], source: str, refused: Iterable[tuple[str, str]]) -> None:
    """Each (field, why): a config.json that sets the field to a true value is refused."""
    for field, why in refused:
        if cfg.get(field, False):
            raise ConfigError(f"{source}: field `{field}`: {why}")


def rope_settings(
    cfg: dict[str, Any],
    source: str,
    *,
    supported: tuple[str, ...] = ("default",),
    family: str | None = None,
) -> dict[str, Any]:
    """`rope_scaling` (hub files) overlaid by `rope_parameters` (transformers 5), its rope type
    one of `supported` (errors name `family` when given)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConfigError(f"{source}: `rope_parameters`/`rope_scaling` must be objects")
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in supported:
        where = f" for {family}" if family else ""
        raise ConfigError(
            f"{source}: field `rope_type`: unsupported rope type {rope_type!r}{where} "
            f"(supported: {list(supported)})"
        )
    return merged


def rope_number(
    rope: dict[str, Any], cfg: dict[str, Any], name: str, default: float, source: str
) -> float:
    """A numeric rope field from `rope_settings`, else config.json's top level, else default."""
    value = rope.get(name, cfg.get(name, default))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{source}: field `{name}`: expected a number, got {value!r}")
    return float(value)


def text_config(cfg: dict[str, Any], source: str, **fields: Any) -> TextConfig:
    """A TextConfig of config.json's sizes, kv heads, pad and bos ids plus the family's `fields`;
    TextConfig's own errors are renamed to name `source`."""
    heads = cfg["num_attention_heads"]
    try:
        return TextConfig(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["hidden_size"]),
            ffw_dim=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(heads),
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            pad_token_id=cfg.get("pad_token_id"),
            bos_token_id=cfg.get("bos_token_id"),
            **fields,
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("TextConfig", source, 1)) from None


def full_rotary_text_config(
    cfg: dict[str, Any],
    source: str,
    *,
    family: str,
    attention_bias: bool,
    max_position_embeddings: int,
    eos_token_id: int | None,
) -> TextConfig:
    """TextConfig (variant glm) for a decoder whose rotary turns all of each head's dims with
    default rope, as Llama's and Qwen2's do (they ignore partial_rotary_factor). The last three
    arguments are the family's: its biases and its defaults for absent fields. Call
    `check_required_and_silu` (and refuse the family's unsupported fields) first."""
    heads = cfg["num_attention_heads"]
    # The HF attention and its rotary read config.head_dim when set, else hidden // heads.
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    if head_dim % 2:
        raise ConfigError(f"{source}: field `head_dim`: must be even for rotary, got {head_dim}")
    rope = rope_settings(cfg, source, family=family)
    return text_config(
        cfg,
        source,
        head_dim=int(head_dim),
        variant="glm",
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_number(rope, cfg, "rope_theta", 10000.0, source),
        partial_rotary_factor=1.0,
        max_position_embeddings=int(cfg.get("max_position_embeddings", max_position_embeddings)),
        attention_bias=attention_bias,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        eos_token_ids=int_tuple(cfg.get("eos_token_id", eos_token_id)),
    )


def check_full_rotary(
    config: ModelConfig, source: str, *, family: str, attention_bias: bool
) -> None:
    """A `family` model is the GLM decoder with full 1D rotary, q/k/v biases exactly when
    `attention_bias`, and no sandwich norms (what `full_rotary_text_config` builds)."""
    c = config.text
    for field, ok, want in (
        ("variant", c.variant == "glm", "'glm'"),
        ("attention_bias", bool(c.attention_bias) == attention_bias, str(attention_bias).lower()),
        ("partial_rotary_factor", c.partial_rotary_factor == 1.0, "1.0"),
        ("mrope_section", c.mrope_section is None, "none"),
    ):
        if not ok:
            raise ConfigError(
                f"{source}: field `text.{field}`: a {family} model needs {want}, "
                f"got {getattr(c, field)!r}"
            )


def config_to_hf(
    cfg: TextConfig,
    *,
    model_type: str,
    architecture: str,
    biases: dict[str, bool] | None = None,
    rope: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The shared config.json fields in transformers 5 spelling plus the hub's top-level rope
    fields, in this order: model_type, architectures, sizes, silu, eps, positions, the family's
    `biases`, tie, default rope (theta and the family's `rope` fields, in `rope_parameters` and
    at the top level), the family's `extra` fields, dtype. The caller checks the config is
    exportable first (`glm.check_hf_exportable`) and appends its eos and pad ids, which the
    families write differently."""
    rope = rope or {}
    return {
        "model_type": model_type,
        "architectures": [architecture],
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
        **(biases or {}),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta, **rope},
        "rope_theta": cfg.rope_theta,
        **rope,
        **(extra or {}),
        "torch_dtype": cfg.param_dtype,
    }
