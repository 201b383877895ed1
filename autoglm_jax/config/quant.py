"""Compression settings: `QuantConfig` (QAT and quantized storage) and `PruneConfig`.

A `QuantConfig` plays two parts with the same meaning:
- in a QAT recipe (`[quant]` table) it tells `autoglm_jax.quant.fake_quant` which matmuls to
  fake-quantize and how; the params stay float;
- as `TextConfig.quant` of a compressed checkpoint it says the decoder's weights are *stored*
  that way (integer kernels plus scales), so `ag.load` builds the matching module.
Export turns the first into the second with the same numbers.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from autoglm_jax.config._common import ConfigError, check

WeightFormat = Literal["int8", "int4", "none"]
ActivationFormat = Literal["none", "int8"]

WEIGHT_FORMATS = ("int8", "int4", "none")
ACTIVATION_FORMATS = ("none", "int8")


@dataclasses.dataclass(frozen=True)
class QuantRule:
    """Einsums whose path inside the decoder matches `pattern` (`re.search`, paths like
    "layers_3/mlp/down_proj", "layers_0/self_attn/q_proj", "lm_head") use `weights`."""

    pattern: str
    weights: WeightFormat


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How the GLM decoder's matmul weights are quantized.

    weights      int8: symmetric, one scale per output channel; int4: symmetric, one scale per
                 group of `group_size` consecutive input channels (fewer when the input axis
                 is shorter), two values packed per byte.
    activations  int8: dynamic symmetric quantization of each token's matmul input (one scale
                 per token, computed on the fly); none: float inputs.
    weight_clip  scale = weight_clip * max|w| / qmax; below 1, the largest weights are clipped
                 (and get no gradient in QAT).
    rules        first match wins; Einsums no rule matches use `weights`; by default
                 `lm_head` stays float. Embedding tables stay float unless a rule names them
                 ("embed_tokens"): int8 then stores one scale per token row, int4 one per
                 group of a row, and a lookup dequantizes only the rows it reads.
    scope        decoder: only the GLM decoder's matmuls (rules match paths inside it:
                 "layers_3/mlp/down_proj", "lm_head"); the encoders and CGA fusion of a
                 glm4v / autoglm model stay float. all: their matmuls too, matched by their
                 path from the model root ("visual/blocks_0/attn/qkv", "fusion/blocks_1/k_proj",
                 "audio_encoder/conv1"); their tables, norms and gates stay float.
    """

    weights: Literal["int8", "int4"] = "int8"
    group_size: int = 128
    activations: ActivationFormat = "none"
    weight_clip: float = 1.0
    rules: tuple[QuantRule, ...] = (QuantRule("lm_head", "none"),)
    scope: Literal["decoder", "all"] = "decoder"

    def __post_init__(self) -> None:
        self.validate("QuantConfig")

    def validate(self, source: str) -> None:
        check(
            self.weights in ("int8", "int4"),
            source,
            "weights",
            f"must be 'int8' or 'int4', got {self.weights!r}",
        )
        check(self.group_size > 0, source, "group_size", f"must be positive, got {self.group_size}")
        check(
            self.activations in ACTIVATION_FORMATS,
            source,
            "activations",
            f"must be one of {list(ACTIVATION_FORMATS)}, got {self.activations!r}",
        )
        check(
            self.scope in ("decoder", "all"),
            source,
            "scope",
            f"must be 'decoder' or 'all', got {self.scope!r}",
        )
        check(
            0.0 < self.weight_clip <= 1.0,
            source,
            "weight_clip",
            f"must be in (0, 1], got {self.weight_clip}",
        )
        for i, rule in enumerate(self.rules):
            check(
                isinstance(rule, QuantRule),
                source,
                f"rules[{i}]",
                f"expected a QuantRule / table with pattern and weights, got {rule!r}",
            )
            check(
                rule.weights in WEIGHT_FORMATS,
                source,
                f"rules[{i}].weights",
                f"must be one of {list(WEIGHT_FORMATS)}, got {rule.weights!r}",
            )
            try:
                re.compile(rule.pattern)
            except re.error as e:
                raise ConfigError(
                    f"{source}: field `rules[{i}].pattern`: invalid regex {rule.pattern!r}: {e}"
                ) from None

    def format_for(self, path: str) -> str:
        """The weight format ("int8", "int4" or "none") of the Einsum at decoder path `path`."""
        for rule in self.rules:
            if re.search(rule.pattern, path):
                return rule.weights
        return self.weights

    def table_format_for(self, path: str) -> str:
        """The format of the embedding table at `path`: a matching rule's, else "none" (tables
        are quantized only by name, so checkpoints written before tables could be keep
        loading as they were)."""
        for rule in self.rules:
            if re.search(rule.pattern, path):
                return rule.weights
        return "none"

    def replace(self, **changes: Any) -> "QuantConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Structured pruning of the GLM decoder (`autoglm_jax.compress.prune`).

    flops_reduction      share of the decoder's matmul FLOPs per token to remove (q, k, v, o,
                         gate_up, down of every layer; embeddings, lm_head and the
                         length-dependent attention scores are not counted).
    prune_heads          also remove query heads (the same number from every KV group, so GQA
                         stays valid and the KV cache keeps its shape); False: FFN neurons only.
    allocation           uniform: every layer loses the same share (widths stay uniform);
                         global: the least important units of any layer go first (widths per
                         layer). See `autoglm_jax.compress.prune`.
    min_keep             global: every layer keeps at least this share of its FFN neurons and
                         of each KV group's heads (at least one).
    calibration_batches  batches ranked per run (each unit's importance is averaged over
                         every real token of them).
    """

    flops_reduction: float = 0.35
    prune_heads: bool = True
    allocation: Literal["uniform", "global"] = "uniform"
    min_keep: float = 0.25
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        self.validate("PruneConfig")

    def validate(self, source: str) -> None:
        check(
            0.0 <= self.flops_reduction < 1.0,
            source,
            "flops_reduction",
            f"must be in [0, 1), got {self.flops_reduction}",
        )
        check(
            self.allocation in ("uniform", "global"),
            source,
            "allocation",
            f"must be 'uniform' or 'global', got {self.allocation!r}",
        )
        check(
            0.0 <= self.min_keep <= 1.0,
            source,
            "min_keep",
            f"must be in [0, 1], got {self.min_keep}",
        )
        check(
            self.calibration_batches > 0,
            source,
            "calibration_batches",
            f"must be positive, got {self.calibration_batches}",
        )

    def replace(self, **changes: Any) -> "PruneConfig":
        return dataclasses.replace(self, **changes)
