"""GLM decoder configuration (model types glm, glm4 and the text part of glm4v)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from autoglm_jax.config._common import DTYPES, check
from autoglm_jax.config.quant import QuantConfig

Variant = Literal["glm", "glm4"]


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
    bos_token_id: int | None = None  # kept for export; the tokenizer adds BOS, not the model
    pad_token_id: int | None = None
    # Per-layer widths of a pruned decoder (None: every layer has ffw_dim / num_heads).
    layer_ffw_dims: tuple[int, ...] | None = None
    layer_num_heads: tuple[int, ...] | None = None
    # Set on compressed checkpoints: the decoder's matmul weights are stored quantized.
    quant: QuantConfig | None = None

    def __post_init__(self) -> None:
        self.validate("TextConfig")

    def validate(self, source: str) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "ffw_dim",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            check(
                getattr(self, name) > 0,
                source,
                name,
                f"must be positive, got {getattr(self, name)}",
            )
        check(
            self.variant in ("glm", "glm4"),
            source,
            "variant",
            f"must be 'glm' or 'glm4', got {self.variant!r}",
        )
        check(
            self.num_heads % self.num_kv_heads == 0,
            source,
            "num_kv_heads",
            f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
            f"({self.num_kv_heads})",
        )
        check(
            0.0 < self.partial_rotary_factor <= 1.0,
            source,
            "partial_rotary_factor",
            f"must be in (0, 1], got {self.partial_rotary_factor}",
        )
        check(
            self.rotary_dim % 2 == 0 and self.rotary_dim > 0,
            source,
            "partial_rotary_factor",
            f"head_dim * partial_rotary_factor = {self.rotary_dim} must be a positive even number",
        )
        check(self.rope_theta > 0, source, "rope_theta", f"must be positive, got {self.rope_theta}")
        check(
            self.rms_norm_eps > 0,
            source,
            "rms_norm_eps",
            f"must be positive, got {self.rms_norm_eps}",
        )
        if self.mrope_section is not None:
            check(
                len(self.mrope_section) == 3 and sum(self.mrope_section) == self.rotary_dim // 2,
                source,
                "mrope_section",
                f"must be 3 ints summing to rotary_dim/2 = {self.rotary_dim // 2}, "
                f"got {list(self.mrope_section)}",
            )
        for name in ("param_dtype", "dtype"):
            check(
                getattr(self, name) in DTYPES,
                source,
                name,
                f"must be one of {DTYPES}, got {getattr(self, name)!r}",
            )
        for name in ("layer_ffw_dims", "layer_num_heads"):
            sizes = getattr(self, name)
            if sizes is not None:
                check(
                    len(sizes) == self.num_layers and all(s > 0 for s in sizes),
                    source,
                    name,
                    f"must hold {self.num_layers} positive sizes (one per layer), "
                    f"got {list(sizes)}",
                )
        if self.layer_num_heads is not None:
            check(
                all(n % self.num_kv_heads == 0 for n in self.layer_num_heads),
                source,
                "layer_num_heads",
                f"every layer's heads must be a multiple of num_kv_heads "
                f"({self.num_kv_heads}), got {list(self.layer_num_heads)}",
            )

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
