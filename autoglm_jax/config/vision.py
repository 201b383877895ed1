"""GLM-4.1V vision tower configuration (the `vision_config` of a glm4v config.json)."""

from __future__ import annotations

import dataclasses
from typing import Any

from autoglm_jax.config._common import DTYPES, check


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
        for name in (
            "depth",
            "d_model",
            "num_heads",
            "ffw_dim",
            "out_hidden_size",
            "merger_ffw_dim",
            "patch_size",
            "temporal_patch_size",
            "spatial_merge_size",
            "in_channels",
            "image_size",
        ):
            check(
                getattr(self, name) > 0,
                source,
                name,
                f"must be positive, got {getattr(self, name)}",
            )
        check(
            self.d_model % self.num_heads == 0,
            source,
            "num_heads",
            f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})",
        )
        # The 2D rotary splits each head into (h, w) halves, each rotated half-split.
        check(
            self.head_dim % 4 == 0,
            source,
            "num_heads",
            f"head_dim = d_model / num_heads = {self.head_dim} must be a multiple of 4 "
            "(2D rotary over h and w)",
        )
        check(
            self.image_size % self.patch_size == 0,
            source,
            "image_size",
            f"must be a multiple of patch_size ({self.patch_size}), got {self.image_size}",
        )
        check(
            self.rms_norm_eps > 0,
            source,
            "rms_norm_eps",
            f"must be positive, got {self.rms_norm_eps}",
        )
        check(
            self.layer_norm_eps > 0,
            source,
            "layer_norm_eps",
            f"must be positive, got {self.layer_norm_eps}",
        )
        check(self.rope_theta > 0, source, "rope_theta", f"must be positive, got {self.rope_theta}")
        for name in ("param_dtype", "dtype"):
            check(
                getattr(self, name) in DTYPES,
                source,
                name,
                f"must be one of {DTYPES}, got {getattr(self, name)!r}",
            )

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
        return self.spatial_merge_size**2

    @property
    def image_factor(self) -> int:
        """Image sides are resized to multiples of this (28)."""
        return self.patch_size * self.spatial_merge_size

    @property
    def num_params(self) -> int:
        """Parameter count computed from the sizes (checked against eval_shape in tests)."""
        d, f, o, fm = self.d_model, self.ffw_dim, self.out_hidden_size, self.merger_ffw_dim
        block = d * 3 * d + (3 * d if self.attention_bias else 0) + d * d + 3 * d * f + 2 * d
        return (
            self.patch_dim * d
            + d  # patch_embed (+ bias)
            + d  # post_conv_layernorm
            + self.position_grid**2 * d  # position table
            + self.depth * block
            + d  # post_layernorm
            + self.merge_factor * d * o
            + o  # downsample (+ bias)
            + o * o
            + 2 * o
            + 3 * o * fm
        )  # merger: proj, LayerNorm, SwiGLU

    def replace(self, **changes: Any) -> "VisionConfig":
        return dataclasses.replace(self, **changes)
