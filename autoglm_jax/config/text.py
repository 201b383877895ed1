"""GLM decoder configuration (model types glm, glm4 and the text part of glm4v)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from autoglm_jax.config._common import DTYPES, ConfigError, check
from autoglm_jax.config.quant import QuantConfig

Variant = Literal["glm", "glm4"]

# Rope types we implement. "mrope" is the old Qwen2-VL spelling of default rope + sections.
_SUPPORTED_ROPE_TYPES = ("default", "mrope")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The GLM decoder. `variant="glm4"` adds the sandwich norms of GLM-4-0414 and GLM-4.1V."""

    vocab_size: int
    d_model: int
    ffw_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    variant: Variant = "glm"
    rms_norm_eps: float = 1.5625e-07
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    # M-RoPE: how many rotary frequencies follow the (t, h, w) position rows; None for 1D rope.
    mrope_section: tuple[int, ...] | None = None
    max_position_embeddings: int = 131072
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # Per-layer widths of a pruned decoder (None: every layer has ffw_dim / num_heads).
    layer_ffw_dims: tuple[int, ...] | None = None
    layer_num_heads: tuple[int, ...] | None = None
    # Set on compressed checkpoints: the decoder's matmul weights are stored quantized.
    quant: QuantConfig | None = None

    def __post_init__(self) -> None:
        self.validate("TextConfig")

    def validate(self, source: str) -> None:
        for name in ("vocab_size", "d_model", "ffw_dim", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            check(getattr(self, name) > 0, source, name, f"must be positive, got {getattr(self, name)}")
        check(self.variant in ("glm", "glm4"), source, "variant",
              f"must be 'glm' or 'glm4', got {self.variant!r}")
        check(self.num_heads % self.num_kv_heads == 0, source, "num_kv_heads",
              f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        check(0.0 < self.partial_rotary_factor <= 1.0, source, "partial_rotary_factor",
              f"must be in (0, 1], got {self.partial_rotary_factor}")
        check(self.rotary_dim % 2 == 0 and self.rotary_dim > 0, source, "partial_rotary_factor",
              f"head_dim * partial_rotary_factor = {self.rotary_dim} must be a positive even number")
        check(self.rope_theta > 0, source, "rope_theta", f"must be positive, got {self.rope_theta}")
        check(self.rms_norm_eps > 0, source, "rms_norm_eps", f"must be positive, got {self.rms_norm_eps}")
        if self.mrope_section is not None:
            check(len(self.mrope_section) == 3 and sum(self.mrope_section) == self.rotary_dim // 2,
                  source, "mrope_section",
                  f"must be 3 ints summing to rotary_dim/2 = {self.rotary_dim // 2}, "
                  f"got {list(self.mrope_section)}")
        for name in ("param_dtype", "dtype"):
            check(getattr(self, name) in DTYPES, source, name,
                  f"must be one of {DTYPES}, got {getattr(self, name)!r}")
        for name in ("layer_ffw_dims", "layer_num_heads"):
            sizes = getattr(self, name)
            if sizes is not None:
                check(len(sizes) == self.num_layers and all(s > 0 for s in sizes), source, name,
                      f"must hold {self.num_layers} positive sizes (one per layer), "
                      f"got {list(sizes)}")
        if self.layer_num_heads is not None:
            check(all(n % self.num_kv_heads == 0 for n in self.layer_num_heads), source,
                  "layer_num_heads", f"every layer's heads must be a multiple of num_kv_heads "
                  f"({self.num_kv_heads}), got {list(self.layer_num_heads)}")

    # Derived sizes.
    def ffw_dim_at(self, layer: int) -> int:
        return self.ffw_dim if self.layer_ffw_dims is None else self.layer_ffw_dims[layer]

    def num_heads_at(self, layer: int) -> int:
        return self.num_heads if self.layer_num_heads is None else self.layer_num_heads[layer]

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor + 1e-9)  # as transformers' int()

    @property
    def sandwich_norm(self) -> bool:
        return self.variant == "glm4"

    @property
    def num_params(self) -> int:
        """Parameter count computed from the sizes (checked against eval_shape in tests)."""
        d, k, h = self.d_model, self.num_kv_heads, self.head_dim
        layers = 0
        for i in range(self.num_layers):
            n, f = self.num_heads_at(i), self.ffw_dim_at(i)
            attn = d * n * h + 2 * d * k * h + n * h * d
            if self.attention_bias:
                attn += n * h + 2 * k * h
            norms = (4 if self.sandwich_norm else 2) * d
            layers += attn + 2 * d * f + f * d + norms
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + layers + d + head

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per token over all layers at the compute dtype."""
        itemsize = 2 if self.dtype in ("bfloat16", "float16") else 4
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def replace(self, **changes: Any) -> "TextConfig":
        return dataclasses.replace(self, **changes)


def _as_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_fields(cfg: dict[str, Any], source: str, default_partial: float) -> dict[str, Any]:
    """Read rope settings in both spellings: hub files (top-level rope_theta,
    partial_rotary_factor, rope_scaling) and transformers 5 (`rope_parameters`)."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConfigError(f"{source}: `rope_parameters`/`rope_scaling` must be objects")
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: field `rope_type`: unsupported rope type {rope_type!r} "
            f"(supported: {list(_SUPPORTED_ROPE_TYPES)})")
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    partial = merged.get("partial_rotary_factor", cfg.get("partial_rotary_factor", default_partial))
    mrope = merged.get("mrope_section")
    for name, value in (("rope_theta", theta), ("partial_rotary_factor", partial)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: field `{name}`: expected a number, got {value!r}")
    return dict(rope_theta=float(theta), partial_rotary_factor=float(partial),
                mrope_section=tuple(mrope) if mrope is not None else None)


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")


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
            "(supported: 'glm', 'glm4', 'glm4v')")
    for key in _REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{source}: missing required field `{key}`")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: field `hidden_act`: only 'silu' is supported, "
                          f"got {cfg['hidden_act']!r}")
    heads = cfg["num_attention_heads"]
    if model_type == "glm4v":
        # Glm4vTextAttention derives its head size itself (hidden_size // heads); a head_dim in
        # config.json reaches only the rotary embedding, which rotates
        # int(head_dim * partial_rotary_factor) of each head's dimensions.
        head_dim = cfg["hidden_size"] // heads
        rope = _rope_fields(cfg, source, default_partial=1.0)
        rotary = int((cfg.get("head_dim") or head_dim) * rope["partial_rotary_factor"])
        if not 0 < rotary <= head_dim or rotary % 2:
            raise ConfigError(f"{source}: fields `head_dim` and `partial_rotary_factor` give a "
                              f"rotary size of {rotary}, which must be even and at most the "
                              f"attention head size hidden_size // num_attention_heads = "
                              f"{head_dim}")
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
    try:
        return TextConfig(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["hidden_size"]),
            ffw_dim=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(heads),
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            variant=variant,
            rms_norm_eps=float(cfg.get("rms_norm_eps", default_eps)),
            max_position_embeddings=int(cfg.get("max_position_embeddings",
                                                32768 if model_type == "glm4v" else 131072)),
            attention_bias=bias,
            tie_word_embeddings=tie,
            eos_token_ids=_as_tuple(eos),
            pad_token_id=cfg.get("pad_token_id"),
            **rope,
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("TextConfig", source, 1)) from None


def check_hf_exportable(cfg: TextConfig) -> None:
    """Pruned (per-layer widths) and quantized decoders have no transformers layout."""
    if cfg.layer_ffw_dims is not None or cfg.layer_num_heads is not None:
        raise ConfigError("TextConfig: per-layer widths (a pruned decoder) have no Hugging Face "
                          "layout; save the model with ag.save")
    if cfg.quant is not None:
        raise ConfigError("TextConfig: quantized weights have no Hugging Face layout; save the "
                          "model with ag.save")


def text_config_to_hf(cfg: TextConfig) -> dict[str, Any]:
    """A config.json dict (transformers 5 spelling plus the hub's top-level fields) for
    GlmForCausalLM / Glm4ForCausalLM."""
    if cfg.mrope_section is not None:
        raise ConfigError("TextConfig with mrope_section exports as part of a glm4v model")
    check_hf_exportable(cfg)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta,
            "partial_rotary_factor": cfg.partial_rotary_factor}
    out = {
        "model_type": cfg.variant,
        "architectures": ["GlmForCausalLM" if cfg.variant == "glm" else "Glm4ForCausalLM"],
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
        "attention_bias": cfg.attention_bias,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "partial_rotary_factor": cfg.partial_rotary_factor,
        "torch_dtype": cfg.param_dtype,
    }
    if cfg.eos_token_ids:
        out["eos_token_id"] = list(cfg.eos_token_ids)
    # Always written: transformers' GlmConfig defaults a missing pad id to 151329, which is out
    # of range for small vocabularies.
    out["pad_token_id"] = cfg.pad_token_id
    return out
