"""Pieces shared by the pre-LN transformer encoders (Whisper, ViT): bidirectional multi-head
self-attention and the GELU MLP. Parameter names follow the callers (HF key maps rely on them).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoglm_jax.nn.layers import DotGeneral, Einsum

Array = jax.Array


class EncoderSelfAttention(nn.Module):
    """Multi-head self-attention over all tokens, softmax in fp32.

    `k_bias=False` drops k_proj's bias (Whisper); `scale_queries` multiplies q by head_dim^-0.5
    after its bias instead of scaling the logits (Whisper's order, kept for bitwise closeness).
    """

    d_model: int
    num_heads: int
    head_dim: int
    qkv_bias: bool = True
    k_bias: bool = True
    scale_queries: bool = False
    out_name: str = "o_proj"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d, n, h, dtype = self.d_model, self.num_heads, self.head_dim, self.dtype

        def proj(name: str, bias: bool) -> Array:
            return Einsum(
                "BTD,DNH->BTNH",
                (d, n, h),
                ("embed", "heads", "head_dim"),
                bias_shape=(n, h) if bias else None,
                bias_axes=("heads", "head_dim"),
                dtype=dtype,
                param_dtype=self.param_dtype,
                dot_general=self.dot_general,
                name=name,
            )(x)

        q = proj("q_proj", self.qkv_bias)
        k = proj("k_proj", self.qkv_bias and self.k_bias)
        v = proj("v_proj", self.qkv_bias)
        scale = h**-0.5
        if self.scale_queries:
            q, scale = q * jnp.asarray(scale, dtype), 1.0
        logits = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits * scale if scale != 1.0 else logits, axis=-1).astype(dtype)
        out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)
        return Einsum(
            "BTNH,NHD->BTD",
            (n, h, d),
            ("heads", "head_dim", "embed"),
            bias_shape=(d,),
            bias_axes=("embed",),
            dtype=dtype,
            param_dtype=self.param_dtype,
            dot_general=self.dot_general,
            name=self.out_name,
        )(out)


def gelu_mlp(
    x: Array,
    d_model: int,
    ffw_dim: int,
    dtype: Any,
    param_dtype: Any,
    dot_general: DotGeneral | None,
) -> Array:
    """fc2(gelu(fc1(x))) with exact GELU. Call inside a compact method: fc1/fc2 become children
    of the calling module."""
    y = Einsum(
        "BTD,DF->BTF",
        (d_model, ffw_dim),
        ("embed", "mlp"),
        bias_shape=(ffw_dim,),
        bias_axes=("mlp",),
        dtype=dtype,
        param_dtype=param_dtype,
        dot_general=dot_general,
        name="fc1",
    )(x)
    y = jax.nn.gelu(y, approximate=False)
    return Einsum(
        "BTF,FD->BTD",
        (ffw_dim, d_model),
        ("mlp", "embed"),
        bias_shape=(d_model,),
        bias_axes=("embed",),
        dtype=dtype,
        param_dtype=param_dtype,
        dot_general=dot_general,
        name="fc2",
    )(y)
