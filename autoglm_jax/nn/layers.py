"""Shared layers: norms, linear maps with logical axes, embeddings, rotary embeddings.

Axis legend (every einsum in the package uses these letters, with these meanings only;
docs/architecture.md has the same table and tests/test_architecture.py checks the letters):
  B batch, T query tokens (or samples), S key tokens, D model width, N query heads,
  K kv heads, G queries per kv head, H head dim, F ffw width, V vocab, P patches,
  M memory tokens, C channels / fused projection index, R rotary frequencies,
  O output width of a projection to another width, E CGA modalities, Q M-RoPE position rows,
  A audio windows, L frames per audio window, X Y rows / columns inside a kernel window or
  patch, I J rows / columns of a learned position grid, x y rows / columns of the grid it is
  resampled to.

Logical axis names attached to weights (mapped to mesh axes by `autoglm_jax.sharding`):
  embed, heads, kv_heads, head_dim, mlp, vocab, norm, fused, and for encoders the same names.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
DotGeneral = Callable[..., Array]


def dtype_of(name: str) -> Dtype:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def _init_with_axes(init: Callable, names: Sequence[str | None]) -> Callable:
    return nn.with_logical_partitioning(init, tuple(names))


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back to the input dtype, then scaled (HF order)."""

    eps: float
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale",
            _init_with_axes(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias, computed in fp32 (Whisper, ViT, the vision merger)."""

    eps: float
    use_bias: bool = True
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param(
            "scale", _init_with_axes(nn.initializers.ones, ("norm",)), (d,), self.param_dtype
        )
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)
        if self.use_bias:
            bias = self.param(
                "bias", _init_with_axes(nn.initializers.zeros, ("norm",)), (d,), self.param_dtype
            )
            y = y + bias.astype(jnp.float32)
        return y.astype(x.dtype)


class EinsumPolicy:
    """Passed where a `dot_general` goes, a policy takes over the weight of every `Einsum` it
    reaches: `einsum(module, x)` creates or reads the module's weight params (by name, on
    `module`) and returns the product, which the Einsum completes with its bias. QAT
    (fake-quantized float kernels) and quantized storage (integer kernels plus scales) are
    policies (`autoglm_jax.quant`), so model code never mentions quantization.
    """

    def einsum(self, module: "Einsum", x: Array) -> Array:
        raise NotImplementedError

    def table(self, module: "Embed") -> "EmbeddingTable":
        """The embedding table of `module` (its params created or read on it, in `setup`).
        Float unless the policy's rules name the table (quantized storage, QAT)."""
        return float_table(module)


class EmbeddingTable:
    """An embedding table [V, D] as a policy stores it: `rows(ids)` gathers [*ids.shape, D]
    (a quantized table dequantizes only the rows it gathers), `full()` is the whole f32 or
    param-dtype table (for the tied output head)."""

    def __init__(self, table: Array):
        self.table = table

    def rows(self, ids: Array) -> Array:
        return jnp.take(self.table, ids, axis=0)

    def full(self) -> Array:
        return self.table


def table_init() -> Callable:
    return _init_with_axes(nn.initializers.normal(0.02), ("vocab", "embed"))


def float_table(module: "Embed") -> EmbeddingTable:
    shape = (module.vocab_size, module.d_model)
    return EmbeddingTable(module.param("embedding", table_init(), shape, module.param_dtype))


def contracting_axes(equation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input axes, kernel axes) that `equation` ("x,kernel->out") sums over."""
    inputs, out = equation.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    shared = [c for c in rhs if c in lhs and c not in out]
    if not shared:
        raise ValueError(f"einsum {equation!r} contracts no kernel axis")
    stray = [c for c in rhs if c not in lhs and c not in out]
    if stray:
        raise ValueError(f"einsum {equation!r}: kernel axes {stray} are summed on their own")
    return tuple(lhs.index(c) for c in shared), tuple(rhs.index(c) for c in shared)


class FanInInit(EinsumPolicy):
    """Init-time policy: every Einsum kernel is drawn from normal(0, 1/sqrt(fan_in)), fan_in
    the product of its contracting axes, instead of the default normal(0, 0.02) (transformers'
    `initializer_range`, tuned for widths in the thousands). At width 128 the 0.02 init
    shrinks each matmul's output about 4x, so small encoders trained from scratch start with
    near-constant outputs (a tiny Whisper's frames drown in its position table). Same param
    tree; use it only to initialise (`ag.init(..., init="fan_in")`)."""

    def einsum(self, module: "Einsum", x: Array) -> Array:
        _, contract = contracting_axes(module.equation)
        fan_in = math.prod(module.shape[a] for a in contract)
        kernel = module.param(
            "kernel",
            _init_with_axes(nn.initializers.normal(fan_in**-0.5), module.axes),
            module.shape,
            module.param_dtype,
        )
        return module.product(x, kernel)


class Einsum(nn.Module):
    """A weight of shape `shape` applied by `equation` ("BTD,DNH->BTNH"), plus an optional bias
    of shape `bias_shape` (the output's trailing axes).

    `dot_general` is injectable, so QAT and quantized inference wrap the matmul without the
    model code changing: a plain dot_general function replaces the product, an
    `EinsumPolicy` owns the weight (float {"kernel", "bias"} for QAT, {"kernel": int8,
    "scale", "bias"} for quantized storage).
    """

    equation: str
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    bias_shape: tuple[int, ...] | None = None
    bias_axes: tuple[str | None, ...] | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    dot_general: DotGeneral | EinsumPolicy | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        if isinstance(self.dot_general, EinsumPolicy):
            y = self.dot_general.einsum(self, x)
        else:
            y = self.product(x, self.float_kernel(), self.dot_general)
        if self.bias_shape is not None:
            bias = self.param(
                "bias",
                _init_with_axes(
                    nn.initializers.zeros, self.bias_axes or (None,) * len(self.bias_shape)
                ),
                self.bias_shape,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y

    def float_kernel(self) -> Array:
        """The float "kernel" param (created on init), in its param dtype."""
        return self.param(
            "kernel", _init_with_axes(self.kernel_init, self.axes), self.shape, self.param_dtype
        )

    def product(self, x: Array, kernel: Array, dot_general: DotGeneral | None = None) -> Array:
        """`equation` applied to x and kernel at the compute dtype."""
        kernel = kernel.astype(self.dtype)
        if dot_general is None:
            return jnp.einsum(self.equation, x, kernel, preferred_element_type=self.dtype)
        return jnp.einsum(
            self.equation, x, kernel, _dot_general=dot_general, preferred_element_type=self.dtype
        )


class Embed(nn.Module):
    """Token embedding table [V, D]; `attend` gives the tied output head. A `policy` (the
    decoder's, when it has one) decides how the table is stored: float, or quantized where its
    rules name the table (`EinsumPolicy.table`)."""

    vocab_size: int
    d_model: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    policy: EinsumPolicy | None = None

    def setup(self) -> None:
        self.weights = float_table(self) if self.policy is None else self.policy.table(self)

    def __call__(self, ids: Array) -> Array:
        return self.weights.rows(ids).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        table = self.weights.full().astype(self.dtype)
        return jnp.einsum("BTD,VD->BTV", x.astype(self.dtype), table)


# ----------------------------------------------------------------------------------------
# Rotary embeddings.


def rope_inv_freq(rotary_dim: int, theta: float) -> np.ndarray:
    """f32[R], R = rotary_dim / 2: theta^(-2r/rotary_dim), as transformers builds it."""
    return 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))


def mrope_axis_of_frequency(num_freqs: int, mrope_section: Sequence[int] | None) -> np.ndarray:
    """i32[R]: which position row (0=t, 1=h, 2=w) drives each rotary frequency.

    transformers' glm4v splits the R frequencies into `mrope_section` chunks and takes chunk i
    from position row i % 3; without sections every frequency follows row 0.
    """
    if mrope_section is None:
        return np.zeros((num_freqs,), np.int32)
    axes = np.concatenate([np.full((n,), i % 3, np.int32) for i, n in enumerate(mrope_section)])
    assert axes.shape[0] == num_freqs, (axes.shape, num_freqs)
    return axes


def rope_angles(
    positions: Array, rotary_dim: int, theta: float, mrope_section: Sequence[int] | None = None
) -> Array:
    """Rotation angles f32[B, T, R] for int positions [B, T] or M-RoPE positions [3, B, T]."""
    inv_freq = jnp.asarray(rope_inv_freq(rotary_dim, theta))
    if positions.ndim == 2:
        return positions.astype(jnp.float32)[..., None] * inv_freq
    axis = mrope_axis_of_frequency(inv_freq.shape[0], mrope_section)
    per_row = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, R]
    return _select_rows(per_row, axis)


def _select_rows(per_row: Array, axis: np.ndarray) -> Array:
    # per_row [3, B, T, R]; pick row axis[r] for frequency r.
    onehot = jnp.asarray(np.eye(3, dtype=np.float32)[axis].T)  # [3, R]
    return jnp.einsum("QBTR,QR->BTR", per_row, onehot)


def apply_interleaved_rope(x: Array, angles: Array) -> Array:
    """Rotate the first 2R dims of x [B, T, N, H] in interleaved pairs (x0,x1),(x2,x3)...,
    as GLM does; the remaining H - 2R dims pass through. angles f32[B, T, R]."""
    rot = angles.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    xf = x_rot.astype(jnp.float32).reshape(*x_rot.shape[:-1], rot // 2, 2)
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype).astype(jnp.float32)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype).astype(jnp.float32)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)
    out = out.reshape(x_rot.shape).astype(x.dtype)
    return jnp.concatenate([out, x_pass], axis=-1)


def apply_half_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Half-split rotation (rotate_half of Qwen2-VL / the GLM-4.1V vision tower), in fp32.
    x [..., N, H]; cos/sin [..., H] broadcast over the head axis."""
    xf = x.astype(jnp.float32)
    h = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., h:], xf[..., :h]], axis=-1)
    out = xf * cos[..., None, :] + rotated * sin[..., None, :]
    return out.astype(x.dtype)
