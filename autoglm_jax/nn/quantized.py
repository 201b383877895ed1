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
from autoglm_jax.nn.layers import DotGeneral, Einsum, EinsumPolicy
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
    config: QuantConfig, module_path: tuple[str, ...], decoder: tuple[str, ...]
) -> str:
    """ "int8", "int4" or "none" for the Einsum at `module_path` (from the root module).
    Einsums outside the decoder (encoders, fusion) are quantized only with scope "all", their
    rules matched against the path from the root."""
    if tuple(module_path[: len(decoder)]) != tuple(decoder):
        return config.format_for("/".join(module_path)) if config.scope == "all" else "none"
    return config.format_for("/".join(module_path[len(decoder) :]))


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


def _check_stored(module: Einsum, kernel: Array, scale: Array, layout: Layout) -> None:
    path = "/".join(module.path)
    if kernel.dtype != jnp.int8 or tuple(kernel.shape) != layout.stored_shape:
        raise ValueError(
            f"{path}/kernel: expected a quantized {layout.format} kernel "
            f"i8{list(layout.stored_shape)}, got {kernel.dtype}{list(kernel.shape)}"
        )
    if tuple(scale.shape) != layout.scale_shape:
        raise ValueError(
            f"{path}/scale: expected shape {list(layout.scale_shape)}, got {list(scale.shape)}"
        )
