"""Integer weight formats: int8 per output channel, int4 per input-channel group (packed).

Every function here is shared by QAT (fake quantization), export and quantized inference, so
the three give bit-identical weights: QAT multiplies by `dequantize(*quantize(w))`, export
stores `quantize(w)`, inference multiplies by `dequantize(stored)`.

A weight is an `Einsum` kernel; its layout comes from the einsum equation. The kernel's
contracting axes (letters shared with the input and absent from the output, "D" of
"BTD,DNH->BTNH", "NH" of "BTNH,NHD->BTD") are the input channels; the others are output
channels.

Scales are stored at the model's param dtype (f32 or bf16) and applied in f32.

int8  q i8[kernel shape], scale [kernel shape with the contracting axes set to 1]:
      w ~= q * scale, q in [-127, 127], one scale per output channel.
int4  one scale per group of `group` consecutive values along the last contracting axis (the
      "group axis", of length K): n_groups = ceil(K / group_size) equal groups of
      group = ceil(K / n_groups) <= group_size values (group_size when it divides K; K itself
      when K <= group_size), the axis zero-padded to n_groups * group (less than n_groups
      values of padding). Two values share a byte: with the group axis padded to an even
      length E, byte i holds value i in its low nibble and value i + E/2 in its high one, so
      the stored kernel is i8[kernel shape with the group axis E/2] and the scale
      [kernel shape with the group axis n_groups]. q in [-7, 7].
`jnp.int4` is not used: on CPU it takes one byte per value (measured with
`on_device_size_in_bytes`), so packing by hand is what halves the memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from autoglm_jax.nn.layers import contracting_axes  # noqa: F401  (re-exported)

Array = jax.Array

QMAX = {"int8": 127, "int4": 7}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one Einsum kernel is quantized and stored (hashable: a static jit argument)."""

    format: str  # "int8" | "int4"
    shape: tuple[int, ...]  # the float kernel's shape
    contract: tuple[int, ...]  # kernel axes summed by the einsum (input channels)
    group: int = 0  # int4: values per scale along the group axis

    @property
    def qmax(self) -> int:
        return QMAX[self.format]

    @property
    def group_axis(self) -> int:
        return self.contract[-1]

    @property
    def num_groups(self) -> int:
        return -(-self.shape[self.group_axis] // self.group)

    @property
    def packed_len(self) -> int:
        padded = self.num_groups * self.group
        return (padded + 1) // 2

    @property
    def stored_shape(self) -> tuple[int, ...]:
        if self.format == "int8":
            return self.shape
        return _with(self.shape, self.group_axis, self.packed_len)

    @property
    def scale_shape(self) -> tuple[int, ...]:
        if self.format == "int8":
            return tuple(1 if i in self.contract else n for i, n in enumerate(self.shape))
        return _with(self.shape, self.group_axis, self.num_groups)

    def scale_axes(self, axes: tuple[str | None, ...]) -> tuple[str | None, ...]:
        """Logical axis names of the scale: none along the reduced / grouped axes."""
        reduced = self.contract if self.format == "int8" else (self.group_axis,)
        return tuple(None if i in reduced else a for i, a in enumerate(axes))


def _with(shape: tuple[int, ...], axis: int, n: int) -> tuple[int, ...]:
    return tuple(n if i == axis else s for i, s in enumerate(shape))


def layout_for(equation: str, shape: tuple[int, ...], fmt: str, group_size: int = 128) -> Layout:
    """The Layout of a kernel of `shape` used by `equation` in format "int8" or "int4"."""
    if fmt not in QMAX:
        raise ValueError(f"unknown weight format {fmt!r} (int8, int4)")
    _, contract = contracting_axes(equation)
    shape = tuple(int(s) for s in shape)
    if fmt == "int8":
        return Layout("int8", shape, contract)
    k = shape[contract[-1]]
    groups = -(-k // group_size)
    return Layout("int4", shape, contract, group=-(-k // groups))


# ------------------------------------------------------------------------------------------
# Weights.


def _grouped(w: Array, layout: Layout) -> Array:
    """w [kernel shape] -> [..., n_groups, group] with the group axis moved last, zero-padded."""
    x = jnp.moveaxis(w, layout.group_axis, -1)
    pad = layout.num_groups * layout.group - x.shape[-1]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(*x.shape[:-1], layout.num_groups, layout.group)


def _ungrouped(x: Array, layout: Layout) -> Array:
    """Inverse of `_grouped`: [..., n_groups, group] -> kernel shape."""
    x = x.reshape(*x.shape[:-2], -1)[..., : layout.shape[layout.group_axis]]
    return jnp.moveaxis(x, -1, layout.group_axis)


def _scale(amax: Array, layout: Layout, clip: float, dtype: Any) -> Array:
    """The stored scale (rounded to `dtype`, the model's param dtype) as f32."""
    scale = ((amax * clip) / layout.qmax).astype(dtype).astype(jnp.float32)
    return jnp.where(scale > 0, scale, 1.0)  # all-zero channels (or bf16 underflow)


def quantize(
    w: Array, layout: Layout, clip: float = 1.0, scale_dtype: Any = jnp.float32
) -> tuple[Array, Array]:
    """Float kernel -> (stored kernel i8[layout.stored_shape], scale[layout.scale_shape] in
    `scale_dtype`). Values are rounded against the scale as stored."""
    w = w.astype(jnp.float32)
    if layout.format == "int8":
        amax = jnp.max(jnp.abs(w), axis=layout.contract, keepdims=True)
        scale = _scale(amax, layout, clip, scale_dtype)
        q = jnp.clip(jnp.round(w / scale), -layout.qmax, layout.qmax).astype(jnp.int8)
        return q, scale.astype(scale_dtype)
    g = _grouped(w, layout)  # [..., n_groups, group]
    scale = _scale(jnp.max(jnp.abs(g), axis=-1), layout, clip, scale_dtype)  # [..., n_groups]
    q = jnp.clip(jnp.round(g / scale[..., None]), -layout.qmax, layout.qmax).astype(jnp.int8)
    packed = pack_int4(q.reshape(*q.shape[:-2], -1))
    return (
        jnp.moveaxis(packed, -1, layout.group_axis),
        jnp.moveaxis(scale, -1, layout.group_axis).astype(scale_dtype),
    )


def dequantize(q: Array, scale: Array, layout: Layout) -> Array:
    """Stored kernel and scale -> the f32 kernel they stand for."""
    scale = scale.astype(jnp.float32)
    if layout.format == "int8":
        return q.astype(jnp.float32) * scale
    values = unpack_int4(jnp.moveaxis(q, layout.group_axis, -1))
    values = values[..., : layout.num_groups * layout.group]
    values = values.reshape(*values.shape[:-1], layout.num_groups, layout.group)
    w = values.astype(jnp.float32) * jnp.moveaxis(scale, layout.group_axis, -1)[..., None]
    return _ungrouped(w, layout)


def clip_mask(w: Array, layout: Layout, clip: float = 1.0, scale_dtype: Any = jnp.float32) -> Array:
    """bool[kernel shape]: values `quantize` does not clip (those that round to at most qmax
    in magnitude; with clip = 1 that is all of them)."""
    w = w.astype(jnp.float32)
    limit = layout.qmax + 0.5
    if layout.format == "int8":
        amax = jnp.max(jnp.abs(w), axis=layout.contract, keepdims=True)
        return jnp.abs(w / _scale(amax, layout, clip, scale_dtype)) < limit
    g = _grouped(w, layout)
    scale = _scale(jnp.max(jnp.abs(g), axis=-1), layout, clip, scale_dtype)
    return _ungrouped(jnp.abs(g / scale[..., None]) < limit, layout)


def pack_int4(q: Array) -> Array:
    """i8[..., n] of values in [-8, 7] -> i8[..., ceil(n / 2)]: value i in the low nibble of
    byte i, value i + ceil(n / 2) in the high nibble (the last axis zero-padded to even)."""
    n = q.shape[-1]
    if n % 2:
        q = jnp.pad(q, [(0, 0)] * (q.ndim - 1) + [(0, 1)])
    half = q.shape[-1] // 2
    lo, hi = q[..., :half].astype(jnp.int32), q[..., half:].astype(jnp.int32)
    byte = (lo & 0xF) | ((hi & 0xF) << 4)
    return jnp.where(byte > 127, byte - 256, byte).astype(jnp.int8)


def unpack_int4(packed: Array) -> Array:
    """Inverse of `pack_int4` (i8[..., m] -> i8[..., 2m]); arithmetic shifts sign-extend."""
    lo = jnp.right_shift(jnp.left_shift(packed, 4), 4)
    hi = jnp.right_shift(packed, 4)
    return jnp.concatenate([lo, hi], axis=-1)


# ------------------------------------------------------------------------------------------
# Activations: dynamic int8, one scale per token.


def quantize_dequantize_activations(x: Array, contract: tuple[int, ...]) -> Array:
    """x rounded to int8 with one scale per token (max |x| over the contracted axes / 127),
    returned dequantized at x's dtype."""
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=contract, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    return (jnp.clip(jnp.round(xf / scale), -127, 127) * scale).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fake_quant_activations(x: Array, contract: tuple[int, ...]) -> Array:
    """`quantize_dequantize_activations` with a straight-through (identity) gradient."""
    return quantize_dequantize_activations(x, contract)


def _act_fwd(x: Array, contract: tuple[int, ...]) -> tuple[Array, None]:
    return quantize_dequantize_activations(x, contract), None


def _act_bwd(contract: tuple[int, ...], _: None, g: Array) -> tuple[Array]:
    return (g,)


fake_quant_activations.defvjp(_act_fwd, _act_bwd)


# ------------------------------------------------------------------------------------------
# Bytes.


def tree_bytes(tree: object) -> int:
    """Bytes the arrays of a pytree occupy (itemsize x size; packed int4 counts as stored)."""
    return sum(int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
