"""GLM-4.1V vision tower configuration (the `vision_config` of a glm4v config.json)."""

from __future__ import annotations

import dataclasses
from typing import Any

from autoglm_jax.config._common import DTYPES, ConfigError, check


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The GLM-4.1V vision tower and patch merger. Defaults are GLM-4.1V-9B / AutoGLM-Phone-9B.

    Widths, as transformers' `Glm4vVisionModel` builds them:
      d_model          width of the ViT blocks (`hidden_size`, 1536)
      ffw_dim          SwiGLU width inside each block; transformers uses `out_hidden_size` here
      out_hidden_size  width after the 2x2 `downsample` conv and of the merger (= text d_model)
      merger_ffw_dim   SwiGLU width of the merger (`vision_config.intermediate_size`, 13696)
    """

    depth: int = 24
    d_model: int = 1536
    num_heads: int = 12
    ffw_dim: int = 4096
    out_hidden_size: int = 4096
    merger_ffw_dim: int = 13696
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    image_size: int = 336  # the learned position table covers image_size / patch_size squared
    rms_norm_eps: float = 1e-5
    layer_norm_eps: float = 1e-5  # the merger's LayerNorm (torch default; not in config.json)
    rope_theta: float = 10000.0
    attention_bias: bool = False
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations

    def __post_init__(self) -> None:
        self.validate("VisionConfig")

    def validate(self, source: str) -> None:
        for name in ("depth", "d_model", "num_heads", "ffw_dim", "out_hidden_size",
                     "merger_ffw_dim", "patch_size", "temporal_patch_size", "spatial_merge_size",
                     "in_channels", "image_size"):
            check(getattr(self, name) > 0, source, name,
                  f"must be positive, got {getattr(self, name)}")
        check(self.d_model % self.num_heads == 0, source, "num_heads",
              f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})")
        # The 2D rotary splits each head into (h, w) halves, each rotated half-split.
        check(self.head_dim % 4 == 0, source, "num_heads",
              f"head_dim = d_model / num_heads = {self.head_dim} must be a multiple of 4 "
              "(2D rotary over h and w)")
        check(self.image_size % self.patch_size == 0, source, "image_size",
              f"must be a multiple of patch_size ({self.patch_size}), got {self.image_size}")
        check(self.rms_norm_eps > 0, source, "rms_norm_eps",
              f"must be positive, got {self.rms_norm_eps}")
        check(self.layer_norm_eps > 0, source, "layer_norm_eps",
              f"must be positive, got {self.layer_norm_eps}")
        check(self.rope_theta > 0, source, "rope_theta", f"must be positive, got {self.rope_theta}")
        for name in ("param_dtype", "dtype"):
            check(getattr(self, name) in DTYPES, source, name,
                  f"must be one of {DTYPES}, got {getattr(self, name)!r}")

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened input patch: channels * temporal * patch * patch (1176)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def position_grid(self) -> int:
        """Side of the learned position table (24 for 336 / 14)."""
        return self.image_size // self.patch_size

    @property
    def merge_factor(self) -> int:
        """Patches per output token (4)."""
        return self.spatial_merge_size ** 2

    @property
    def image_factor(self) -> int:
        """Image sides are resized to multiples of this (28)."""
        return self.patch_size * self.spatial_merge_size

    @property
    def num_params(self) -> int:
        """Parameter count computed from the sizes (checked against eval_shape in tests)."""
        d, f, o, fm = self.d_model, self.ffw_dim, self.out_hidden_size, self.merger_ffw_dim
        block = d * 3 * d + (3 * d if self.attention_bias else 0) + d * d + 3 * d * f + 2 * d
        return (self.patch_dim * d + d            # patch_embed (+ bias)
                + d                               # post_conv_layernorm
                + self.position_grid ** 2 * d     # position table
                + self.depth * block
                + d                               # post_layernorm
                + self.merge_factor * d * o + o   # downsample (+ bias)
                + o * o + 2 * o + 3 * o * fm)     # merger: proj, LayerNorm, SwiGLU

    def replace(self, **changes: Any) -> "VisionConfig":
        return dataclasses.replace(self, **changes)


def _square(value: Any, source: str, field: str) -> int:
    """image_size / patch_size may be an int or a [h, w] pair; only square ones are supported."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"{source}: field `{field}`: only square sizes are supported, "
                              f"got {list(value)}")
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{source}: field `{field}`: expected an int, got {value!r}")
    return value


def _int(cfg: dict[str, Any], key: str, default: int, source: str,
         alias: str | None = None) -> int:
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
        raise ConfigError(f"{source}: unsupported model_type {model_type!r} for the vision "
                          "tower (supported: 'glm4v', 'glm4v_vision')")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{source}: field `hidden_act`: only 'silu' is supported, got {act!r}")
    rope = cfg.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: field `rope_parameters`: expected an object")
    rope_type = rope.get("rope_type", "axial")
    if rope_type != "axial":
        raise ConfigError(f"{source}: field `rope_type`: the vision tower supports only 'axial', "
                          f"got {rope_type!r}")
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
            temporal_patch_size=_square(cfg.get("temporal_patch_size", 2), source,
                                        "temporal_patch_size"),
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
            f"width to out_hidden_size ({cfg.out_hidden_size}), got {cfg.ffw_dim}")
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
