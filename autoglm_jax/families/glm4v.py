"""GLM-4.1V (`model_type` glm4v, transformers' Glm4vForConditionalGeneration): the real
AutoGLM-Phone-9B architecture. Its config.json reader and writer (the vision tower's included),
tensor maps, example inputs and registry entry."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from autoglm_jax.config import ConfigError, ModelConfig, VisionConfig
from autoglm_jax.families import glm_keys, vision_keys
from autoglm_jax.families.family import Family, hf_architecture
from autoglm_jax.families.glm import check_hf_exportable, ignored_glm_key, text_config_from_hf
from autoglm_jax.families.keymap import TensorMap
from autoglm_jax.nn.layers import DotGeneral
from autoglm_jax.nn.model import Glm4vModel

# transformers' Glm4vConfig defaults (GLM-4.1V); later GLM-V configs use other ids.
_GLM4V_TOKEN_DEFAULTS = {
    "image_token_id": 151343,
    "image_start_token_id": 151339,
    "image_end_token_id": 151340,
    "video_token_id": 151344,
    "video_start_token_id": 151341,
    "video_end_token_id": 151342,
}


def _square(value: Any, source: str, field: str) -> int:
    """image_size / patch_size may be an int or a [h, w] pair; only square ones are supported."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(
                f"{source}: field `{field}`: only square sizes are supported, got {list(value)}"
            )
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{source}: field `{field}`: expected an int, got {value!r}")
    return value


def _int(cfg: dict[str, Any], key: str, default: int, source: str, alias: str | None = None) -> int:
    value = cfg.get(key, cfg.get(alias, default) if alias else default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{source}: field `{key}`: expected an int, got {value!r}")
    return value


def vision_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> VisionConfig:
    """VisionConfig from a glm4v config.json dict (reads its `vision_config`), or from a bare
    `glm4v_vision` dict. Missing fields take the defaults of transformers' Glm4vVisionConfig.

    transformers builds the block MLP with width `out_hidden_size` and the merger's SwiGLU with
    `vision_config.intermediate_size`; both are read from here, not from text_config.
    """
    model_type = cfg.get("model_type")
    if model_type == "glm4v":
        vision = cfg.get("vision_config")
        if vision is None:
            vision = {}  # Glm4vConfig builds a default Glm4vVisionConfig
        if not isinstance(vision, dict):
            raise ConfigError(f"{source}: field `vision_config`: expected an object")
        cfg, source = vision, f"{source}:vision_config"
    elif model_type not in (None, "glm4v_vision"):
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} for the vision "
            "tower (supported: 'glm4v', 'glm4v_vision')"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{source}: field `hidden_act`: only 'silu' is supported, got {act!r}")
    rope = cfg.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: field `rope_parameters`: expected an object")
    rope_type = rope.get("rope_type", "axial")
    if rope_type != "axial":
        raise ConfigError(
            f"{source}: field `rope_type`: the vision tower supports only 'axial', "
            f"got {rope_type!r}"
        )
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise ConfigError(f"{source}: field `rope_theta`: expected a number, got {theta!r}")
    eps = cfg.get("rms_norm_eps", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise ConfigError(f"{source}: field `rms_norm_eps`: expected a number, got {eps!r}")
    out_hidden = _int(cfg, "out_hidden_size", 4096, source)
    try:
        return VisionConfig(
            depth=_int(cfg, "depth", 24, source, alias="num_hidden_layers"),
            d_model=_int(cfg, "hidden_size", 1536, source),
            num_heads=_int(cfg, "num_heads", 12, source, alias="num_attention_heads"),
            ffw_dim=out_hidden,
            out_hidden_size=out_hidden,
            merger_ffw_dim=_int(cfg, "intermediate_size", 13696, source),
            patch_size=_square(cfg.get("patch_size", 14), source, "patch_size"),
            temporal_patch_size=_square(
                cfg.get("temporal_patch_size", 2), source, "temporal_patch_size"
            ),
            spatial_merge_size=_int(cfg, "spatial_merge_size", 2, source),
            in_channels=_int(cfg, "in_channels", 3, source),
            image_size=_square(cfg.get("image_size", 336), source, "image_size"),
            rms_norm_eps=float(eps),
            rope_theta=float(theta),
            attention_bias=bool(cfg.get("attention_bias", False)),
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("VisionConfig", source, 1)) from None


def vision_config_to_hf(cfg: VisionConfig) -> dict[str, Any]:
    """The `vision_config` object of a glm4v config.json (transformers 5 spelling)."""
    if cfg.ffw_dim != cfg.out_hidden_size:
        raise ConfigError(
            f"VisionConfig: field `ffw_dim`: transformers' Glm4vVisionModel ties the block MLP "
            f"width to out_hidden_size ({cfg.out_hidden_size}), got {cfg.ffw_dim}"
        )
    return {
        "model_type": "glm4v_vision",
        "depth": cfg.depth,
        "hidden_size": cfg.d_model,
        "num_heads": cfg.num_heads,
        "out_hidden_size": cfg.out_hidden_size,
        "intermediate_size": cfg.merger_ffw_dim,
        "patch_size": cfg.patch_size,
        "temporal_patch_size": cfg.temporal_patch_size,
        "spatial_merge_size": cfg.spatial_merge_size,
        "in_channels": cfg.in_channels,
        "image_size": cfg.image_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": cfg.attention_bias,
        "rope_parameters": {"rope_type": "axial", "rope_theta": cfg.rope_theta},
    }


def _token_ids(cfg: dict[str, Any], source: str) -> dict[str, int]:
    out = {}
    for name, default in _GLM4V_TOKEN_DEFAULTS.items():
        value = cfg.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: field `{name}`: expected an int, got {value!r}")
        out[name] = value
    return out


def glm4v_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """ModelConfig (model_type glm4v) from a Glm4vForConditionalGeneration config.json."""
    text = text_config_from_hf(cfg, source=source)
    vision = vision_config_from_hf(cfg, source=source)
    try:
        return ModelConfig(
            model_type="glm4v",
            text=text,
            vision=vision,
            hf_architecture=hf_architecture(cfg),
            **_token_ids(cfg, source),
        )
    except ConfigError as e:
        raise ConfigError(str(e).replace("ModelConfig", source, 1)) from None


def glm4v_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json dict for transformers' Glm4vForConditionalGeneration."""
    t, v = cfg.text, cfg.vision
    if t is None or v is None:
        raise ConfigError("glm4v export needs the text and vision stacks")
    check_hf_exportable(t)
    if t.num_heads * t.head_dim != t.d_model:
        raise ConfigError(
            f"TextConfig: field `head_dim`: transformers' Glm4vTextModel uses hidden_size / "
            f"num_attention_heads = {t.d_model // t.num_heads}, got {t.head_dim}"
        )
    if not (t.sandwich_norm and t.attention_bias and t.mrope_section is not None):
        raise ConfigError(
            "TextConfig: a glm4v decoder has sandwich norms (variant 'glm4'), "
            "q/k/v biases and M-RoPE sections"
        )
    text = {
        "model_type": "glm4v_text",
        "vocab_size": t.vocab_size,
        "hidden_size": t.d_model,
        "intermediate_size": t.ffw_dim,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": t.rope_theta,
            "partial_rotary_factor": t.partial_rotary_factor,
            "mrope_section": list(t.mrope_section),
        },
        "pad_token_id": t.pad_token_id,
    }
    if t.eos_token_ids:
        text["eos_token_id"] = list(t.eos_token_ids)
    out = {
        "model_type": "glm4v",
        "architectures": ["Glm4vForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision_config_to_hf(v),
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": t.param_dtype,
    }
    for name in _GLM4V_TOKEN_DEFAULTS:
        value = getattr(cfg, name)
        if value is not None:
            out[name] = value
    return out


def glm4v_tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    """Every tensor of a Glm4vForConditionalGeneration checkpoint."""
    return vision_keys.hf_tensor_maps(
        cfg.vision, prefix="model.visual.", path_prefix=("visual",)
    ) + glm_keys.hf_tensor_maps(
        cfg.text,
        prefix="model.language_model.",
        head_key="lm_head.weight",
        path_prefix=("language_model",),
    )


def image_inputs(config: ModelConfig) -> tuple[Any, ...]:
    """(input_ids, positions, pixel_values, image_grid_thw) of one image of 2x2 merged patches
    between its begin/end tokens: touches the vision tower and the decoder."""
    c = config
    if c.vision is None:
        return (np.zeros((1, 2), np.int32), None, None, None)
    m = c.vision.spatial_merge_size
    ids = np.asarray(
        [[c.image_start_token_id or 0, c.image_token_id, c.image_end_token_id or 0]], np.int32
    )
    pixels = jnp.zeros((m * m, c.vision.patch_dim), jnp.float32)
    return (ids, None, pixels, np.asarray([[1, m, m]], np.int32))


def _build(config: ModelConfig, dot_general: DotGeneral | None = None) -> Glm4vModel:
    return Glm4vModel(config, dot_general)


GLM4V = Family(
    name="glm4v",
    config_from_hf=lambda raw, source: glm4v_config_from_hf(raw, source=source),
    config_to_hf=glm4v_config_to_hf,
    build=_build,
    tensor_maps=glm4v_tensor_maps,
    example_inputs=image_inputs,
    stacks=("text", "vision"),
    ignored=ignored_glm_key,
    decoder_path=("language_model",),
    multimodal=True,
    param_stacks={"visual": "vision", "language_model": "text"},
)
