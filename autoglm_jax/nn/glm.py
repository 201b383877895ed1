"""The GLM decoder (model types glm, glm4 and the text part of glm4v).

One decoder for training, parity tests and the engine: attention goes through a backend
(`autoglm_jax.nn.attention`), positions are [B, T] or M-RoPE [3, B, T], and an optional
`layer_hook(i, h)` lets the multimodal composite insert fusion blocks between layers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoglm_jax.config import TextConfig
from autoglm_jax.nn.attention import AttentionBackend, DenseCausal
from autoglm_jax.nn.layers import (
    DotGeneral,
    Einsum,
    EinsumPolicy,
    Embed,
    RMSNorm,
    apply_interleaved_rope,
    dtype_of,
    rope_angles,
)
from autoglm_jax.nn.quantized import QuantizedWeights

Array = jax.Array
LayerHook = Callable[[int, Array], Array]


class GlmAttention(nn.Module):
    config: TextConfig
    dot_general: DotGeneral | EinsumPolicy | None = None

    @nn.compact
    def __call__(
        self, x: Array, angles: Array, backend: AttentionBackend, layer: int, cache: Any
    ) -> tuple[Array, Any]:
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        n, k, h, d = c.num_heads_at(layer), c.num_kv_heads, c.head_dim, c.d_model

        def proj(name: str, heads: int, head_axis: str) -> Array:
            return Einsum(
                "BTD,DNH->BTNH",
                (d, heads, h),
                ("embed", head_axis, "head_dim"),
                bias_shape=(heads, h) if c.attention_bias else None,
                bias_axes=(head_axis, "head_dim"),
                dtype=dtype,
                param_dtype=pdtype,
                dot_general=self.dot_general,
                name=name,
            )(x)

        q = apply_interleaved_rope(proj("q_proj", n, "heads"), angles)
        key = apply_interleaved_rope(proj("k_proj", k, "kv_heads"), angles)
        value = proj("v_proj", k, "kv_heads")
        out, cache = backend(q, key, value, layer=layer, cache=cache, sm_scale=h**-0.5)
        out = Einsum(
            "BTNH,NHD->BTD",
            (n, h, d),
            ("heads", "head_dim", "embed"),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="o_proj",
        )(out)
        return out, cache


class GlmMLP(nn.Module):
    """SwiGLU with the fused gate_up weight [D, 2, F] (index 0 is the gate, as in HF).
    `ffw_dim` overrides the config's width (a pruned layer)."""

    config: TextConfig
    dot_general: DotGeneral | EinsumPolicy | None = None
    ffw_dim: int | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        f = self.ffw_dim or c.ffw_dim
        gate_up = Einsum(
            "BTD,DCF->BTCF",
            (c.d_model, 2, f),
            ("embed", None, "mlp"),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="gate_up_proj",
        )(x)
        hidden = jax.nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
        return Einsum(
            "BTF,FD->BTD",
            (f, c.d_model),
            ("mlp", "embed"),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="down_proj",
        )(hidden)


class GlmBlock(nn.Module):
    config: TextConfig
    dot_general: DotGeneral | EinsumPolicy | None = None

    @nn.compact
    def __call__(
        self, x: Array, angles: Array, backend: AttentionBackend, layer: int, cache: Any
    ) -> tuple[Array, Any]:
        c = self.config
        pdtype = dtype_of(c.param_dtype)

        def norm(name: str) -> RMSNorm:
            return RMSNorm(c.rms_norm_eps, pdtype, name=name)

        attn, cache = GlmAttention(c, self.dot_general, name="self_attn")(
            norm("input_layernorm")(x), angles, backend, layer, cache
        )
        if c.sandwich_norm:
            attn = norm("post_self_attn_layernorm")(attn)
        h = x + attn
        mlp = GlmMLP(c, self.dot_general, c.ffw_dim_at(layer), name="mlp")(
            norm("post_attention_layernorm")(h)
        )
        if c.sandwich_norm:
            mlp = norm("post_mlp_layernorm")(mlp)
        return h + mlp, cache


class GlmDecoder(nn.Module):
    """GLM causal LM: token ids (or embeddings) -> logits f32[B, T, V].

    With `config.quant` set (a compressed checkpoint) the matmul weights are stored quantized
    (`autoglm_jax.quant.QuantizedWeights`); per-layer widths come from the config too.
    """

    config: TextConfig
    dot_general: DotGeneral | EinsumPolicy | None = None

    def setup(self) -> None:
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        dot_general = self.dot_general
        if c.quant is not None:
            dot_general = QuantizedWeights(c.quant, decoder_path=self.path, inner=dot_general)
        policy = dot_general if isinstance(dot_general, EinsumPolicy) else None
        self.embed_tokens = Embed(c.vocab_size, c.d_model, dtype, pdtype, policy)
        self.layers = [GlmBlock(c, dot_general) for _ in range(c.num_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, pdtype)
        if not c.tie_word_embeddings:
            self.lm_head = Einsum(
                "BTD,DV->BTV",
                (c.d_model, c.vocab_size),
                ("embed", "vocab"),
                dtype=dtype,
                param_dtype=pdtype,
                dot_general=dot_general,
            )

    def embed(self, input_ids: Array) -> Array:
        """Token embeddings [B, T, D] at the compute dtype."""
        return self.embed_tokens(input_ids)

    def __call__(
        self,
        input_ids: Array | None = None,
        positions: Array | None = None,
        *,
        inputs_embeds: Array | None = None,
        segment_ids: Array | None = None,
        attention: AttentionBackend | None = None,
        kv_caches: Sequence[Any] | None = None,
        logits_indices: Array | None = None,
        layer_hook: LayerHook | None = None,
        return_hidden: bool = False,
    ) -> Any:
        """
        input_ids     i32[B, T] (or inputs_embeds [B, T, D])
        positions     i32[B, T] or M-RoPE i32[3, B, T]; default arange(T)
        segment_ids   i32[B, T] for the default dense backend (packing / padding)
        attention     a backend; default DenseCausal(segment_ids)
        kv_caches     per-layer cache objects for the backend; when given, the updated caches are
                      returned as the second output
        logits_indices i32[B, K]: compute logits only at these positions -> [B, K, V]
        return_hidden return the final normed hidden states instead of logits
        Each layer's output is sown to the "intermediates" collection as `hidden_states`.
        """
        c = self.config
        x = (
            self.embed(input_ids)
            if inputs_embeds is None
            else inputs_embeds.astype(dtype_of(c.dtype))
        )
        b, t = x.shape[:2]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        angles = rope_angles(positions, c.rotary_dim, c.rope_theta, c.mrope_section)
        backend = attention if attention is not None else DenseCausal(segment_ids)
        new_caches = []
        for i, layer in enumerate(self.layers):
            cache = kv_caches[i] if kv_caches is not None else None
            x, cache = layer(x, angles, backend, i, cache)
            new_caches.append(cache)
            if layer_hook is not None:
                x = layer_hook(i, x)
            self.sow("intermediates", "hidden_states", x)
        x = self.norm(x)
        if logits_indices is not None:
            x = jnp.take_along_axis(x, logits_indices[..., None], axis=1)
        if return_hidden:
            out = x
        elif c.tie_word_embeddings:
            out = self.embed_tokens.attend(x)
        else:
            out = self.lm_head(x)
        if not return_hidden:
            out = out.astype(jnp.float32)
        return (out, new_caches) if kv_caches is not None else out
