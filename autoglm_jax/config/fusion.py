"""CGA (cross-modal gated attention) fusion configuration: our extension of GLM-4.1V.

No public checkpoint has these weights: they start fresh with every gate at zero, so a model
with fusion equals its base model until trained (see docs/multimodal.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autoglm_jax.config._common import DTYPES, check


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Modality projectors and gated cross-attention blocks.

    A CGA block follows decoder layer i when (i + 1) % cga_every == 0. Each block: RMSNorm of the
    text hidden states -> queries; RMSNorm of the modality memory -> keys/values (GQA:
    num_heads query heads share num_kv_heads key/value heads of head_dim); one softmax per
    modality; the result of modality m is scaled per token by tanh(alpha_m) * sigmoid(w_m . x_t)
    (alpha_m starts at 0) and added to the residual stream; then a SwiGLU MLP of width ffw_dim
    gated the same way.

    Projectors map each encoder's output to the decoder width: Whisper frames are stacked
    `audio_stack` to 1 (1500 -> 375 per 30 s window), then Linear -> GELU -> Linear with hidden
    width `projector_dim` (None: the decoder width); ViT patch tokens (CLS dropped) go through
    their own MLP of the same shape.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffw_dim: int
    cga_every: int = 4
    audio_stack: int = 4
    projector_dim: int | None = None
    rms_norm_eps: float = 1e-5
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations

    def __post_init__(self) -> None:
        self.validate("FusionConfig")

    def validate(self, source: str) -> None:
        for name in (
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "ffw_dim",
            "cga_every",
            "audio_stack",
        ):
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                source,
                name,
                f"must be a positive integer, got {value!r}",
            )
        check(
            self.num_heads % self.num_kv_heads == 0,
            source,
            "num_kv_heads",
            f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
            f"({self.num_kv_heads})",
        )
        if self.projector_dim is not None:
            check(
                isinstance(self.projector_dim, int) and self.projector_dim > 0,
                source,
                "projector_dim",
                f"must be a positive integer, got {self.projector_dim!r}",
            )
        check(
            self.rms_norm_eps > 0,
            source,
            "rms_norm_eps",
            f"must be positive, got {self.rms_norm_eps}",
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
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads

    def num_blocks(self, num_layers: int) -> int:
        """CGA blocks in a decoder of `num_layers` layers."""
        return num_layers // self.cga_every

    def block_after_layer(self, layer: int) -> int | None:
        """Index of the CGA block that follows decoder layer `layer`, or None."""
        return (layer + 1) // self.cga_every - 1 if (layer + 1) % self.cga_every == 0 else None

    def block_params(self, d_model: int, num_modalities: int) -> int:
        """Parameters of one CGA block (checked against eval_shape in tests)."""
        d, n, k, h, f = d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.ffw_dim
        attn = d * n * h + 2 * d * k * h + n * h * d
        mlp = 3 * d * f
        norms = 3 * d  # query norm, memory norm, MLP norm
        gates = 2 * (d * num_modalities + num_modalities)  # w_m and alpha_m, attention and MLP
        return attn + mlp + norms + gates

    def projector_params(self, in_dim: int, d_model: int) -> int:
        p = self.projector_dim or d_model
        return in_dim * p + p + p * d_model + d_model

    def replace(self, **changes: Any) -> "FusionConfig":
        return dataclasses.replace(self, **changes)


def default_fusion_config(text: Any, cga_every: int = 4) -> FusionConfig:
    """Fusion sized from a decoder (TextConfig): its KV heads and head_dim, half its query heads
    (when that stays a multiple of the KV heads), a gated MLP half the decoder width, a block
    after every `cga_every` layers (at most num_layers). For GLM-4.1V-9B: 16 query heads, 2 KV
    heads of 128, MLP 2048, every 4 layers (the autoglm-phone-9b preset)."""
    heads = text.num_heads // 2
    if heads < text.num_kv_heads or heads % text.num_kv_heads:
        heads = text.num_heads
    return FusionConfig(
        num_heads=heads,
        num_kv_heads=text.num_kv_heads,
        head_dim=text.head_dim,
        ffw_dim=max(1, text.d_model // 2),
        cga_every=min(cga_every, text.num_layers),
        rms_norm_eps=text.rms_norm_eps,
        param_dtype=text.param_dtype,
        dtype=text.dtype,
    )
