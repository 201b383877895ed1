"""ViT (`model_type` vit, transformers' ViTModel or a ViTForImageClassification's encoder): an
image encoder the AutoGLM composite can fuse by CGA. The config.json reader, tensor maps and
the registry entry."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from autoglm_jax.config import ConfigError, ModelConfig, ViTConfig
from autoglm_jax.config.vit import _pair
from autoglm_jax.families import vit_keys
from autoglm_jax.families.family import Family, hf_architecture, no_export
from autoglm_jax.nn.model import ViTModel

_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# Our field -> the ViT config.json field.
_HF_FIELDS = {
    "d_model": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "ffw_dim": "intermediate_size",
    "image_size": "image_size",
    "patch_size": "patch_size",
    "num_channels": "num_channels",
    "layer_norm_eps": "layer_norm_eps",
    "qkv_bias": "qkv_bias",
    "pooler_dim": "pooler_output_size",
}
_HF_DEFAULTS = {
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
    "pooler_output_size": None,
}


def vit_config_from_hf(
    cfg: dict[str, Any], *, source: str = "config.json", add_pooling_layer: bool | None = None
) -> ViTConfig:
    """ViTConfig from a ViT config.json dict.

    Defaults for absent optional fields follow transformers' ViTConfig. `add_pooling_layer` is
    not stored in config.json (it is a ViTModel constructor argument); by default it is False for
    a ViTForImageClassification checkpoint (which has no pooler) and True otherwise.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type != "vit":
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} for the ViT encoder "
            "(supported: 'vit')"
        )
    for key in _REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{source}: missing required field `{key}`")
    for key, supported in (("hidden_act", "gelu"), ("pooler_act", "tanh")):
        value = cfg.get(key, supported)
        if value != supported:
            raise ConfigError(
                f"{source}: field `{key}`: only {supported!r} is supported, got {value!r}"
            )
    values: dict[str, Any] = {}
    for ours, theirs in _HF_FIELDS.items():
        value = cfg.get(theirs, _HF_DEFAULTS.get(theirs))
        if ours in ("image_size", "patch_size"):
            value = _pair(value)
        elif ours == "layer_norm_eps":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{source}: field `{theirs}`: expected a number, got {value!r}")
            value = float(value)
        elif ours == "qkv_bias":
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: field `{theirs}`: expected a boolean, got {value!r}")
        elif value is not None or ours != "pooler_dim":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{source}: field `{theirs}`: expected an integer, got {value!r}")
        values[ours] = value
    if values["pooler_dim"] == values["d_model"]:
        values["pooler_dim"] = None  # transformers writes the default out explicitly
    if add_pooling_layer is None:
        add_pooling_layer = "ViTForImageClassification" not in (cfg.get("architectures") or ())
    try:
        return ViTConfig(add_pooling_layer=bool(add_pooling_layer), **values)
    except ConfigError as e:
        message = str(e).replace("ViTConfig", source, 1)
        for ours, theirs in _HF_FIELDS.items():  # name the field as the file spells it
            message = message.replace(f"field `{ours}`", f"field `{theirs}`")
        raise ConfigError(message) from None


def _prefix(config: ModelConfig) -> str:
    return "vit." if config.hf_architecture == "ViTForImageClassification" else ""


VIT = Family(
    name="vit",
    config_from_hf=lambda raw, source: ModelConfig(
        model_type="vit",
        vit=vit_config_from_hf(raw, source=source),
        hf_architecture=hf_architecture(raw),
    ),
    config_to_hf=no_export("ViT export is not implemented; use the original checkpoint"),
    build=lambda config, dot_general=None: ViTModel(config.vit, dot_general),
    tensor_maps=lambda config: vit_keys.hf_tensor_maps(config.vit, prefix=_prefix(config)),
    example_inputs=lambda config: (
        jnp.zeros((1, config.vit.num_channels, *config.vit.image_size), jnp.float32),
    ),
    stacks=("vit",),
    ignored=lambda key, config: vit_keys.is_ignored(key),
    param_stacks={"": "vit"},
)
