"""ViT image encoder configuration (`model_type: vit`, transformers' ViTModel)."""

from __future__ import annotations

import dataclasses
from typing import Any

from autoglm_jax.config._common import DTYPES, check


def _pair(value: Any) -> Any:
    """An int or a 2-sequence as an (height, width) tuple; anything else is left for validate."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A ViT in transformers' ViTModel layout: Conv2d patch embedding, a CLS token, learned
    positions, `num_layers` pre-LayerNorm blocks with exact GELU, a final LayerNorm and an optional
    tanh pooler over the CLS token.

    `image_size` and `patch_size` are (height, width); an int means a square. As in transformers,
    pixels past the last whole patch are ignored.
    """

    d_model: int
    num_layers: int
    num_heads: int
    ffw_dim: int
    image_size: int | tuple[int, int] = (224, 224)
    patch_size: int | tuple[int, int] = (16, 16)
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    add_pooling_layer: bool = True
    pooler_dim: int | None = None  # None: d_model (transformers' pooler_output_size default)
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _pair(self.image_size))
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        self.validate("ViTConfig")

    def validate(self, source: str) -> None:
        for name in ("d_model", "num_layers", "num_heads", "ffw_dim", "num_channels"):
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                source,
                name,
                f"must be a positive integer, got {value!r}",
            )
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            check(
                isinstance(value, tuple)
                and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value),
                source,
                name,
                f"must be a positive int or two positive ints, got {value!r}",
            )
        check(
            all(i >= p for i, p in zip(self.image_size, self.patch_size)),
            source,
            "patch_size",
            f"{list(self.patch_size)} is larger than image_size {list(self.image_size)}",
        )
        check(
            self.d_model % self.num_heads == 0,
            source,
            "num_heads",
            f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})",
        )
        if self.pooler_dim is not None:
            check(
                isinstance(self.pooler_dim, int) and self.pooler_dim > 0,
                source,
                "pooler_dim",
                f"must be a positive integer, got {self.pooler_dim!r}",
            )
        check(
            self.layer_norm_eps > 0,
            source,
            "layer_norm_eps",
            f"must be positive, got {self.layer_norm_eps}",
        )
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
    def grid(self) -> tuple[int, int]:
        """Patches along (height, width)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def seq_len(self) -> int:
        """Tokens out of the encoder: the CLS token plus one per patch."""
        return 1 + self.num_patches

    @property
    def pooler_width(self) -> int:
        return self.pooler_dim if self.pooler_dim is not None else self.d_model

    @property
    def num_params(self) -> int:
        """Parameter count computed from the sizes (checked against eval_shape in tests)."""
        d, f = self.d_model, self.ffw_dim
        ph, pw = self.patch_size
        embed = self.num_channels * ph * pw * d + d + d + self.seq_len * d  # conv, cls, positions
        attn = 4 * d * d + (3 * d if self.qkv_bias else 0) + d
        layer = attn + 2 * d * f + f + d + 4 * d
        pooler = d * self.pooler_width + self.pooler_width if self.add_pooling_layer else 0
        return embed + self.num_layers * layer + 2 * d + pooler

    def replace(self, **changes: Any) -> "ViTConfig":
        return dataclasses.replace(self, **changes)


# google/vit-base-patch16-224-in21k as a ViTModel: 86,389,248 parameters with the pooler.
VIT_B16 = ViTConfig(d_model=768, num_layers=12, num_heads=12, ffw_dim=3072)
