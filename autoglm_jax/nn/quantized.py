"""Quantized inference: integer weights in memory, dequantized inside the matmul.

`GlmDecoder` builds `QuantizedWeights(config.text.quant, ...)` itself when its config carries
`quant` (a compressed checkpoint), so `ag.load`, `module.apply` and the engine all run the
integer weights without knowing about them. A quantized Einsum's params are

    {"kernel": i8[Layout.stored_shape], "scale": [Layout.scale_shape] (param dtype), "bias"}

(`autoglm_jax.nn.quant_formats` for the layouts); Einsums a rule keeps float are unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoglm_jax.config.quant import QuantConfig
from autoglm_jax.nn.layers import (
    DotGeneral,
    Einsum,
    EinsumPolicy,
    Embed,
    EmbeddingTable,
    float_table,
    table_init,
)
from autoglm_jax.nn.quant_formats import (
    Layout,
    contracting_axes,
    dequantize,
    fake_quant_activations,
    layout_for,
    quantize,
)

Array = jax.Array


def weight_format(
    config: QuantConfig, module_path: tuple[str, ...], decoder: tuple[str, ...], table: bool = False
) -> str:
    """ "int8", "int4" or "none" for the Einsum (or with `table`, the embedding table) at
    `module_path` (from the root module). Modules outside the decoder (encoders, fusion) are
    quantized only with scope "all", their rules matched against the path from the root."""
    format_for = config.table_format_for if table else config.format_for
    if tuple(module_path[: len(decoder)]) != tuple(decoder):
        return format_for("/".join(module_path)) if config.scope == "all" else "none"
    return format_for("/".join(module_path[len(decoder) :]))


# A table [V, D] is quantized as the tied head's kernel: V output channels, D summed, so int8
# keeps one scale per token row and int4 groups run along a row.
TABLE_EQUATION = "BTD,VD->BTV"


def table_layout(config: QuantConfig, module: Embed, decoder: tuple[str, ...]) -> Layout | None:
    """The Layout of `module`'s embedding table under `config`, or None when it stays float."""
    fmt = weight_format(config, module.path, decoder, table=True)
    if fmt == "none":
        return None
    shape = (module.vocab_size, module.d_model)
    return layout_for(TABLE_EQUATION, shape, fmt, config.group_size)


class QuantizedTable(EmbeddingTable):
    """A stored integer table: rows are gathered as integers with their scales, then
    dequantized (a lookup never dequantizes the whole vocabulary)."""

    def __init__(self, q: Array, scale: Array, layout: Layout):
        self.q, self.scale, self.layout = q, scale, layout

    def rows(self, ids: Array) -> Array:
        flat = ids.reshape(-1)
        rows_layout = dataclasses.replace(self.layout, shape=(flat.shape[0], self.layout.shape[1]))
        q, scale = jnp.take(self.q, flat, axis=0), jnp.take(self.scale, flat, axis=0)
        return dequantize(q, scale, rows_layout).reshape(*ids.shape, -1)

    def full(self) -> Array:
        return dequantize(self.q, self.scale, self.layout)


def einsum_layout(config: QuantConfig, module: Einsum, decoder: tuple[str, ...]) -> Layout | None:
    """The Layout of `module`'s kernel under `config`, or None when it stays float."""
    fmt = weight_format(config, module.path, decoder)
    if fmt == "none":
        return None
    return layout_for(module.equation, module.shape, fmt, config.group_size)


def quantize_input(config: QuantConfig, module: Einsum, x: Array) -> Array:
    """The matmul input, fake-quantized per token when `config.activations` is "int8"."""
    if config.activations != "int8":
        return x
    contract, _ = contracting_axes(module.equation)
    return fake_quant_activations(x, contract)


def check_plain_dot_general(inner: Any) -> None:
    if isinstance(inner, EinsumPolicy):
        raise TypeError(
            f"a quantization policy cannot wrap another policy ({inner!r}); "
            "pass a plain dot_general or None"
        )


@dataclasses.dataclass(frozen=True)
class QuantPolicy(EinsumPolicy):
    """What the quantization policies (QAT, export, stored weights) share.

    config        which Einsums, which format (QuantConfig)
    decoder_path  the GLM decoder's module path (the family's `decoder_path`): rules match
                  decoder paths relative to it; Einsums outside it (encoders, fusion) are
                  quantized only with config.scope "all"
    inner         an optional plain dot_general for the product
    """

    config: QuantConfig
    decoder_path: tuple[str, ...] = ()
    inner: DotGeneral | None = None

    def __post_init__(self) -> None:
        check_plain_dot_general(self.inner)

    def layout(self, module: Einsum) -> Layout | None:
        """The Layout of `module`'s kernel, or None when it stays float."""
        return einsum_layout(self.config, module, self.decoder_path)

    def table_layout(self, module: Embed) -> Layout | None:
        """The Layout of `module`'s embedding table, or None when it stays float."""
        return table_layout(self.config, module, self.decoder_path)


@dataclasses.dataclass(frozen=True)
class QuantizedWeights(QuantPolicy):
    """Stored integer weights (a compressed checkpoint), dequantized inside the matmul."""

    def einsum(self, module: Einsum, x: Array) -> Array:
        layout = self.layout(module)
        if layout is None:
            return module.product(x, module.float_kernel(), self.inner)
        init_q = init_s = nn.initializers.zeros  # flax shape-checks stored params with it
        if module.is_initializing():
            # Random init (ag.init of a compressed config): quantize a fresh float kernel.
            w = module.kernel_init(module.make_rng("params"), layout.shape, jnp.float32)
            q0, s0 = quantize(w, layout, self.config.weight_clip, module.param_dtype)
            init_q, init_s = (lambda *_: q0), (lambda *_: s0)
        kernel = module.param(
            "kernel",
            nn.with_logical_partitioning(init_q, module.axes),
            layout.stored_shape,
            jnp.int8,
        )
        scale = module.param(
            "scale",
            nn.with_logical_partitioning(init_s, layout.scale_axes(module.axes)),
            layout.scale_shape,
            module.param_dtype,
        )
        _check_stored(module, kernel, scale, layout)
        w = dequantize(kernel, scale, layout)
        return module.product(quantize_input(self.config, module, x), w, self.inner)

    def table(self, module: Embed) -> EmbeddingTable:
        layout = self.table_layout(module)
        if layout is None:
            return float_table(module)
        init_q = init_s = nn.initializers.zeros
        if module.is_initializing():
            w = table_init()(module.make_rng("params"), layout.shape, jnp.float32)
            q0, s0 = quantize(nn.unbox(w), layout, self.config.weight_clip, module.param_dtype)
            init_q, init_s = (lambda *_: q0), (lambda *_: s0)
        axes = ("vocab", "embed")
        q = module.param(
            "embedding", nn.with_logical_partitioning(init_q, axes), layout.stored_shape, jnp.int8
        )
        scale = module.param(
            "scale",
            nn.with_logical_partitioning(init_s, layout.scale_axes(axes)),
            layout.scale_shape,
            module.param_dtype,
        )
        _check_stored(module, q, scale, layout, "embedding")
        return QuantizedTable(q, scale, layout)


def _check_stored(
    module: nn.Module, kernel: Array, scale: Array, layout: Layout, name: str = "kernel"
) -> None:
    path = "/".join(module.path)
    if kernel.dtype != jnp.int8 or tuple(kernel.shape) != layout.stored_shape:
        raise ValueError(
            f"{path}/{name}: expected a quantized {layout.format} {name} "
            f"i8{list(layout.stored_shape)}, got {kernel.dtype}{list(kernel.shape)}"
        )
    if tuple(scale.shape) != layout.scale_shape:
        raise ValueError(
            f"{path}/scale: expected shape {list(layout.scale_shape)}, got {list(scale.shape)}"
        )
