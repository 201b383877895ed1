"""Quantization-aware training: fake-quantized matmul weights with straight-through gradients.

    policy = fake_quant(QuantConfig(weights="int8"), model.config)
    module = build_module(model.config, policy)        # or model.module.clone(dot_general=policy)
    logits = module.apply({"params": model.params}, ids)  # the float param tree, unchanged

The policy rides in the modules' `dot_general` argument (an `EinsumPolicy`): every Einsum of
the GLM decoder that the config's rules select multiplies by `dequantize(quantize(kernel))`
instead of the kernel (and an embedding table a rule names is looked up the same way), so
model code never changes and float and QAT checkpoints share one param tree. It works at the
Einsum rather than inside a bare dot_general because a bare dot_general knows neither the
layer's path (for the rules) nor which operand is the weight (`jnp.einsum` may swap them).

Gradients are straight-through: d(fake_quant(w))/dw is 1 for weights inside the clipping
range and 0 for clipped ones (none with the default weight_clip = 1). The optional int8
activations are fake-quantized per token with an identity gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoglm_jax.config import ModelConfig
from autoglm_jax.config.quant import QuantConfig
from autoglm_jax.families import decoder_path
from autoglm_jax.nn.layers import DotGeneral, Einsum, Embed, EmbeddingTable, float_table
from autoglm_jax.nn.quant_formats import Layout, clip_mask, dequantize, quantize
from autoglm_jax.nn.quantized import QuantPolicy, quantize_input

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def fake_quant(
    w: Array, layout: Layout, clip: float = 1.0, scale_dtype: Any = jnp.float32
) -> Array:
    """f32 `dequantize(quantize(w))` (the exported weight's exact values), with the
    straight-through gradient: the identity inside the clipping range, zero outside."""
    return dequantize(*quantize(w, layout, clip, scale_dtype), layout)


def _fq_fwd(
    w: Array, layout: Layout, clip: float, scale_dtype: Any
) -> tuple[Array, tuple[Array, Array]]:
    return (
        dequantize(*quantize(w, layout, clip, scale_dtype), layout),
        (clip_mask(w, layout, clip, scale_dtype), jnp.zeros((), w.dtype)),
    )


def _fq_bwd(
    layout: Layout, clip: float, scale_dtype: Any, res: tuple[Array, Array], g: Array
) -> tuple[Array]:
    mask, like = res
    return (jnp.where(mask, g, 0).astype(like.dtype),)


fake_quant.defvjp(_fq_fwd, _fq_bwd)


@dataclasses.dataclass(frozen=True)
class FakeQuant(QuantPolicy):
    """The QAT policy: float params, fake-quantized in the forward pass (the Einsums the
    QuantConfig selects, as export will store them)."""

    def einsum(self, module: Einsum, x: Array) -> Array:
        kernel = module.float_kernel()
        layout = self.layout(module)
        if layout is None:
            return module.product(x, kernel, self.inner)
        w = fake_quant(kernel, layout, self.config.weight_clip, module.param_dtype)
        return module.product(quantize_input(self.config, module, x), w, self.inner)

    def table(self, module: Embed) -> EmbeddingTable:
        table, layout = float_table(module), self.table_layout(module)
        if layout is None:
            return table
        return EmbeddingTable(
            fake_quant(table.full(), layout, self.config.weight_clip, module.param_dtype)
        )


def fake_quant_policy(
    quant: QuantConfig, model_config: ModelConfig, inner: DotGeneral | None = None
) -> FakeQuant:
    """The QAT policy for a model of `model_config` (glm, glm4, glm4v, autoglm)."""
    return FakeQuant(quant, decoder_path(model_config), inner)


def qat_module(module: nn.Module, quant: QuantConfig, model_config: ModelConfig) -> nn.Module:
    """`module` (a built model, unbound) with the QAT policy injected; same param tree."""
    if getattr(module, "dot_general", None) is not None:
        raise ValueError(
            f"{type(module).__name__} already has a dot_general "
            f"({module.dot_general!r}); build it with fake_quant_policy(...)"
        )
    return module.clone(dot_general=fake_quant_policy(quant, model_config))


def qat_model(model: Any, quant: QuantConfig) -> Any:
    """An `ag.Model` whose module fake-quantizes per `quant` (params shared, not copied)."""
    if model.config.text is not None and model.config.text.quant is not None:
        raise ValueError(
            "the model's weights are already stored quantized; QAT starts from a float model"
        )
    return dataclasses.replace(model, module=qat_module(model.module, quant, model.config))
