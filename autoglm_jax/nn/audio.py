"""The Whisper audio encoder (the encoder of transformers' WhisperModel), in Flax Linen.

    log-mel f32[B, M, 3000] -> conv1 (k3, pad 1) + GELU -> conv2 (k3, stride 2, pad 1) + GELU
    -> + embed_positions [1500, D] -> pre-LN blocks -> LayerNorm -> f32[B, 1500, D]

Letters follow the legend in `nn/layers.py`; the conv stems also use X for the 3 kernel taps
(the stems are written as im2col + `Einsum`, so an injected dot_general covers them too).
Audio longer than one 30 s window is encoded window by window (`encode_long`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.config.audio import AudioConfig
from autoglm_jax.nn.encoder import EncoderSelfAttention, gelu_mlp
from autoglm_jax.nn.layers import DotGeneral, Einsum, LayerNorm, dtype_of

Array = jax.Array

_TAPS = 3  # conv kernel width of both stems


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """f32[length, channels]: Whisper's position table, [sin | cos] halves with timescale
    increment ln(max_timescale) / (channels/2 - 1). Used to initialise `embed_positions`."""
    half = channels // 2
    increment = np.log(max_timescale) / (half - 1)
    inv_timescales = np.exp(-increment * np.arange(half, dtype=np.float64))
    scaled = np.arange(length, dtype=np.float64)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def _conv_windows(x: Array, stride: int) -> Array:
    """x [B, T, C] -> the 3-tap windows [B, T', X, C] of a conv with kernel 3, padding 1."""
    t = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
    t_out = (t + 2 - _TAPS) // stride + 1
    taps = [padded[:, k : k + stride * (t_out - 1) + 1 : stride] for k in range(_TAPS)]
    return jnp.stack(taps, axis=2)


class WhisperBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then h + fc2(gelu(fc1(LN(h))))."""

    config: AudioConfig
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
            k_bias=False,
            scale_queries=True,
            out_name="out_proj",
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="self_attn",
        )
        h = x + attention(ln("self_attn_layer_norm")(x))
        return h + gelu_mlp(
            ln("final_layer_norm")(h), c.d_model, c.ffw_dim, dtype, pdtype, self.dot_general
        )


class WhisperEncoder(nn.Module):
    """Whisper encoder: log-mel f32[B, M, F] (F = config.num_frames = 3000) -> [B, F/2, D].

    Parameters (HF names in brackets, see `families/whisper_keys.py`):
      conv1/kernel [3, M, D] (conv1.weight [D, M, 3]), conv2/kernel [3, D, D], biases [D];
      embed_positions [F/2, D]; layers_{i}/{self_attn_layer_norm, self_attn/{q,k,v,out}_proj,
      final_layer_norm, fc1, fc2}; layer_norm.
    Each block's output is sown to "intermediates" as `hidden_states`.
    """

    config: AudioConfig
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, input_features: Array) -> Array:
        c = self.config
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        if input_features.ndim != 3 or input_features.shape[1:] != (c.num_mel_bins, c.num_frames):
            raise ValueError(
                f"WhisperEncoder expects log-mel features [batch, {c.num_mel_bins}, "
                f"{c.num_frames}] (30 s; pad shorter audio, split longer audio with "
                f"encode_long), got shape {tuple(input_features.shape)}"
            )
        x = jnp.swapaxes(input_features.astype(dtype), 1, 2)  # [B, F, M]

        def stem(name: str, x: Array, c_in: int, stride: int) -> Array:
            y = Einsum(
                "BTXC,XCD->BTD",
                (_TAPS, c_in, c.d_model),
                (None, None, "embed"),
                bias_shape=(c.d_model,),
                bias_axes=("embed",),
                dtype=dtype,
                param_dtype=pdtype,
                dot_general=self.dot_general,
                name=name,
            )(_conv_windows(x, stride))
            return jax.nn.gelu(y, approximate=False)

        x = stem("conv1", x, c.num_mel_bins, 1)
        x = stem("conv2", x, c.d_model, 2)  # [B, F/2, D]
        positions = self.param(
            "embed_positions",
            nn.with_logical_partitioning(
                lambda key, shape, dt: jnp.asarray(sinusoids(*shape), dt), (None, "embed")
            ),
            (c.max_source_positions, c.d_model),
            pdtype,
        )
        x = x + positions.astype(dtype)[None]
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        for i in range(c.num_layers):
            x = WhisperBlock(c, self.dot_general, name=f"layers_{i}")(x)
            x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
            self.sow("intermediates", "hidden_states", x)
        return LayerNorm(c.layer_norm_eps, param_dtype=pdtype, name="layer_norm")(x)


@functools.partial(jax.jit, static_argnames=("config", "dot_general"))
def encode_long(
    params: Any,
    config: AudioConfig,
    features_windows: Array,
    *,
    dot_general: DotGeneral | None = None,
) -> Array:
    """Encode audio split into 30 s windows and concatenate the encodings along time.

    features_windows f32[W, M, F] -> [W * F/2, D], or batched f32[B, W, M, F] -> [B, W * F/2, D].
    Every window is encoded independently (Whisper never attends across windows). W may be at
    most `config.max_windows` (from `max_audio_seconds`). Jitted; `config` and `dot_general`
    are static.
    """
    x = jnp.asarray(features_windows)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(
            f"encode_long expects features [W, M, F] or [B, W, M, F], got shape {tuple(x.shape)}"
        )
    b, w = x.shape[:2]
    if w < 1 or w > config.max_windows:
        raise ValueError(
            f"encode_long got {w} windows of {config.window_seconds:g} s; the configured maximum "
            f"is {config.max_windows} (max_audio_seconds={config.max_audio_seconds:g})"
        )
    module = WhisperEncoder(config, dot_general)
    out = module.apply({"params": params}, x.reshape(b * w, *x.shape[2:]))  # [B*W, F/2, D]
    out = out.reshape(b, w * out.shape[1], out.shape[2])
    return out[0] if squeeze else out
