"""A ViT image encoder in transformers' ViTModel layout, in Flax Linen.

    pixels f32[B, C, H, W] -> Conv2d patch embedding (stride = patch) -> [CLS | patches]
    -> + positions [1 + P, D] -> pre-LN blocks -> LayerNorm -> [B, 1 + P, D]
    (-> optional pooler: tanh(dense(h[:, 0])) -> [B, D_pool])

Letters follow the legend in `nn/layers.py`; the patch embedding also uses X and Y for the pixel
rows and columns inside a patch (written as patchify + `Einsum`, so an injected dot_general
covers it too), and E for the pooler's output width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoglm_jax.config.vit import ViTConfig
from autoglm_jax.nn.encoder import EncoderSelfAttention, gelu_mlp
from autoglm_jax.nn.layers import DotGeneral, Einsum, LayerNorm, dtype_of

Array = jax.Array


def patchify(pixel_values: Array, patch_size: tuple[int, int]) -> Array:
    """[B, C, H, W] -> [B, P, C, X, Y] in row-major patch order (as Conv2d(...).flatten(2)).
    Rows and columns past the last whole patch are dropped, as a strided Conv2d does."""
    b, ch, height, width = pixel_values.shape
    ph, pw = patch_size
    gh, gw = height // ph, width // pw
    x = pixel_values[:, :, : gh * ph, : gw * pw].reshape(b, ch, gh, ph, gw, pw)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, ch, ph, pw)


class ViTEmbeddings(nn.Module):
    """Patch embedding, CLS token and learned positions: [B, C, H, W] -> [B, 1 + P, D]."""

    config: ViTConfig
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        b = pixel_values.shape[0]
        ph, pw = c.patch_size
        patches = patchify(pixel_values.astype(dtype), c.patch_size)  # [B, P, C, X, Y]
        x = Einsum(
            "BPCXY,CXYD->BPD",
            (c.num_channels, ph, pw, c.d_model),
            (None, None, None, "embed"),
            bias_shape=(c.d_model,),
            bias_axes=("embed",),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="patch_embeddings",
        )(patches)
        init = nn.initializers.truncated_normal(0.02)
        cls_token = self.param(
            "cls_token", nn.with_logical_partitioning(init, ("embed",)), (c.d_model,), pdtype
        )
        positions = self.param(
            "position_embeddings",
            nn.with_logical_partitioning(init, (None, "embed")),
            (c.seq_len, c.d_model),
            pdtype,
        )
        cls_tokens = jnp.broadcast_to(cls_token.astype(dtype), (b, 1, c.d_model))
        return jnp.concatenate([cls_tokens, x], axis=1) + positions.astype(dtype)[None]


class ViTBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then h + fc2(gelu(fc1(LN(h))))."""

    config: ViTConfig
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        ln = lambda name: LayerNorm(c.layer_norm_eps, param_dtype=pdtype, name=name)  # noqa: E731
        attention = EncoderSelfAttention(
            c.d_model,
            c.num_heads,
            c.head_dim,
            qkv_bias=c.qkv_bias,
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="attention",
        )
        h = x + attention(ln("layernorm_before")(x))
        return h + gelu_mlp(
            ln("layernorm_after")(h), c.d_model, c.ffw_dim, dtype, pdtype, self.dot_general
        )


class ViTEncoder(nn.Module):
    """ViT: pixel_values f32[B, C, H, W] (H, W = config.image_size) ->
    (last_hidden_state [B, 1 + P, D], pooler_output [B, D_pool] or None).

    The second output is None when `config.add_pooling_layer` is False, so callers can always
    unpack two values. Parameters (HF names in `families/vit_keys.py`):
      embeddings/{cls_token [D], position_embeddings [1 + P, D],
                  patch_embeddings/{kernel [C, X, Y, D], bias [D]}};
      layers_{i}/{layernorm_before, attention/{q,k,v,o}_proj, layernorm_after, fc1, fc2};
      layernorm; pooler/{kernel [D, D_pool], bias}.
    Each block's output is sown to "intermediates" as `hidden_states`.
    """

    config: ViTConfig
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, pixel_values: Array) -> tuple[Array, Array | None]:
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        expected = (c.num_channels, *c.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"ViTEncoder expects pixel_values [batch, {expected[0]}, "
                f"{expected[1]}, {expected[2]}], got {tuple(pixel_values.shape)}"
            )
        x = ViTEmbeddings(c, self.dot_general, name="embeddings")(pixel_values)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        for i in range(c.num_layers):
            x = ViTBlock(c, self.dot_general, name=f"layers_{i}")(x)
            x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
            self.sow("intermediates", "hidden_states", x)
        x = LayerNorm(c.layer_norm_eps, param_dtype=pdtype, name="layernorm")(x)
        if not c.add_pooling_layer:
            return x, None
        # E: the pooler's output width.
        pooled = Einsum(
            "BD,DO->BO",
            (c.d_model, c.pooler_width),
            ("embed", None),
            bias_shape=(c.pooler_width,),
            bias_axes=(None,),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="pooler",
        )(x[:, 0])
        return x, jnp.tanh(pooled)
