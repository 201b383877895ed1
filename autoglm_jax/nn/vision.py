"""The GLM-4.1V vision tower and patch merger (transformers' `Glm4vVisionModel`).

Input is HF-processed: pixel_values f32[P, 1176] (patches flattened as (C, T, 14, 14), ordered
2x2-merge-block-major inside each image) and image_grid_thw [n, 3] (t, h, w in patches).
Output is one out_hidden_size vector per 2x2 block of patches: f32[P / 4, out_hidden_size],
images in order, ready to splice at the `<|image|>` tokens.

`image_grid_thw` is static: the position-table resampling weights, the rotary positions and the
per-image attention segments are computed on the host from it. Pass a host numpy array or a
tuple of (t, h, w) tuples; under `jax.jit` close over it or mark it static (a tuple, see
`grid_tuple`), so each distinct set of image sizes compiles once (the engine buckets sizes).

Each (image, frame) is its own attention segment, as in transformers (`cu_seqlens`). For
entries with t > 1 every frame takes its entry's (h, w) position embedding; transformers
indexes the shapes by segment there, which only agrees for t = 1 (images, and videos after
`get_video_features` splits them into t = 1 entries).

Einsum letters follow the legend in `nn/layers.py`; the 2x2 downsample also uses X, Y (row and
column inside the merge window) and E (out_hidden_size).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.config.vision import VisionConfig
from autoglm_jax.nn.layers import DotGeneral, Einsum, LayerNorm, RMSNorm, apply_half_rope, dtype_of

Array = jax.Array
Grid = tuple[tuple[int, int, int], ...]

_CUBIC_A = -0.75  # torch's bicubic convolution constant (grid_sample and interpolate)


# ----------------------------------------------------------------------------------------
# Host-side layout computed from the static grid.


def grid_tuple(image_grid_thw: Any) -> Grid:
    """image_grid_thw (numpy, list, concrete jax array) as a hashable tuple of (t, h, w), for
    `static_argnames` / cache keys. Raises TypeError for a traced array."""
    try:
        arr = np.asarray(image_grid_thw)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            "image_grid_thw must be concrete (a host numpy array or a tuple of (t, h, w)); "
            "it sets static shapes in the vision tower. Under jax.jit close over it or pass it "
            "as a static argument (see grid_tuple)"
        ) from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape [num_images, 3], got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"image_grid_thw must hold integers, got dtype {arr.dtype}")
    return tuple((int(t), int(h), int(w)) for t, h, w in arr)


def merge_block_positions(h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(h_pos, w_pos) i32[h*w] of one frame's patches in HF order: merge x merge blocks in
    raster order, raster order inside each block (transformers' get_vision_position_ids)."""
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hpos = hpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    wpos = wpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return hpos.astype(np.int32), wpos.astype(np.int32)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """[..., 4] weights of taps floor-1 .. floor+2 for fractional offsets t (torch's A=-0.75)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_resample_matrix(out_size: int, in_size: int) -> np.ndarray:
    """f32[out_size, in_size]: 1D bicubic resampling exactly as F.grid_sample(mode="bicubic",
    align_corners=False, padding_mode="border") samples at normalized coordinates
    ((i + 0.5) / out_size) * 2 - 1 (taps outside the table clamp to its edge)."""
    dst = np.arange(out_size, dtype=np.float64)
    norm = ((dst + 0.5) / out_size) * 2 - 1
    src = ((norm + 1) * in_size - 1) / 2  # grid_sampler_unnormalize, align_corners=False
    base = np.floor(src)
    weights = _cubic_weights(src - base)
    taps = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1).astype(np.int64)
    m = np.zeros((out_size, in_size), np.float64)
    for k in range(4):
        np.add.at(m, (np.arange(out_size), taps[:, k]), weights[:, k])
    return m.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Host-side arrays for one static grid (numpy; become constants under jit)."""

    grid: Grid
    h_pos: np.ndarray  # i32[P] row of each patch inside its frame
    w_pos: np.ndarray  # i32[P] column of each patch inside its frame
    segment_ids: np.ndarray  # i32[P] attention segment (one per image frame)
    segments: tuple[tuple[int, int], ...]  # (start, length) of each segment, in order

    @property
    def num_patches(self) -> int:
        return int(self.h_pos.shape[0])


def vision_layout(grid: Grid, merge: int) -> VisionLayout:
    h_all, w_all, seg_all, segments = [], [], [], []
    segment = start = 0
    for i, (t, h, w) in enumerate(grid):
        if t < 1 or h < 1 or w < 1 or h % merge or w % merge:
            raise ValueError(
                f"image_grid_thw[{i}] = {(t, h, w)}: t must be >= 1 and h, w "
                f"positive multiples of spatial_merge_size ({merge})"
            )
        hpos, wpos = merge_block_positions(h, w, merge)
        for _ in range(t):
            h_all.append(hpos)
            w_all.append(wpos)
            seg_all.append(np.full((h * w,), segment, np.int32))
            segments.append((start, h * w))
            segment += 1
            start += h * w
    if not h_all:
        empty = np.zeros((0,), np.int32)
        return VisionLayout(grid, empty, empty, empty, ())
    return VisionLayout(
        grid, np.concatenate(h_all), np.concatenate(w_all), np.concatenate(seg_all), tuple(segments)
    )


# ----------------------------------------------------------------------------------------
# Attention.


# An attention function: (q, k, v [P, N, H], layout, scale) -> [P, N, H], bidirectional within
# each segment of the layout. Swap in a fused kernel (segment ids or cu_seqlens) through
# Glm4vVisionTower.attention_fn.
AttentionFn = Callable[[Array, Array, Array, VisionLayout, float], Array]


def _softmax_attention(q: Array, k: Array, v: Array, mask: Array | None, scale: float) -> Array:
    scores = jnp.einsum("TNH,SNH->NTS", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask[None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("NTS,SNH->TNH", probs, v, preferred_element_type=v.dtype)


def per_image_attention(q: Array, k: Array, v: Array, layout: VisionLayout, scale: float) -> Array:
    """Dense attention inside each segment, on static slices: cost sum(n_i^2), not P^2 (the
    default). Scores and softmax in fp32."""
    if len(layout.segments) == 1:
        return _softmax_attention(q, k, v, None, scale)
    outs = [
        _softmax_attention(q[a : a + n], k[a : a + n], v[a : a + n], None, scale)
        for a, n in layout.segments
    ]
    return jnp.concatenate(outs, axis=0)


def masked_attention(q: Array, k: Array, v: Array, layout: VisionLayout, scale: float) -> Array:
    """One dense [P, P] attention masked by segment ids (the reference for fused kernels)."""
    ids = jnp.asarray(layout.segment_ids)
    return _softmax_attention(q, k, v, ids[:, None] == ids[None, :], scale)


def vision_rope(h_pos: Array, w_pos: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos, sin f32[P, head_dim] of the 2D rotary: head_dim/4 frequencies over the row, the same
    over the column, [h | w] concatenated twice (transformers' Glm4vVisionRotaryEmbedding)."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    fh = h_pos.astype(jnp.float32)[:, None] * inv_freq
    fw = w_pos.astype(jnp.float32)[:, None] * inv_freq
    angles = jnp.concatenate([fh, fw, fh, fw], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


# ----------------------------------------------------------------------------------------
# Modules.


class VisionAttention(nn.Module):
    config: VisionConfig
    attention_fn: AttentionFn = per_image_attention
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, layout: VisionLayout) -> Array:
        cfg = self.config
        d, n, h = cfg.d_model, cfg.num_heads, cfg.head_dim
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        qkv = Einsum(
            "TD,DCNH->TCNH",
            (d, 3, n, h),
            ("embed", "fused", "heads", "head_dim"),
            bias_shape=(3, n, h) if cfg.attention_bias else None,
            bias_axes=("fused", "heads", "head_dim"),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="qkv",
        )(x)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        q = apply_half_rope(q, cos, sin)
        k = apply_half_rope(k, cos, sin)
        out = self.attention_fn(q, k, v, layout, h**-0.5)
        return Einsum(
            "TNH,NHD->TD",
            (n, h, d),
            ("heads", "head_dim", "embed"),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="proj",
        )(out)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) without biases."""

    d_model: int
    ffw_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, dot_general=self.dot_general)
        d, f = self.d_model, self.ffw_dim
        gate = Einsum("TD,DF->TF", (d, f), ("embed", "mlp"), name="gate_proj", **kw)(x)
        up = Einsum("TD,DF->TF", (d, f), ("embed", "mlp"), name="up_proj", **kw)(x)
        return Einsum("TF,FD->TD", (f, d), ("mlp", "embed"), name="down_proj", **kw)(
            jax.nn.silu(gate) * up
        )


class VisionBlock(nn.Module):
    config: VisionConfig
    attention_fn: AttentionFn = per_image_attention
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, layout: VisionLayout) -> Array:
        cfg = self.config
        pdtype = dtype_of(cfg.param_dtype)
        h = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="norm1")(x)
        x = x + VisionAttention(cfg, self.attention_fn, self.dot_general, name="attn")(
            h, cos, sin, layout
        )
        h = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="norm2")(x)
        return x + SwiGLU(
            cfg.d_model, cfg.ffw_dim, dtype_of(cfg.dtype), pdtype, self.dot_general, name="mlp"
        )(h)


class PatchMerger(nn.Module):
    """proj, LayerNorm, exact GELU, then SwiGLU of width merger_ffw_dim (all at out_hidden_size)."""

    config: VisionConfig
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        o = cfg.out_hidden_size
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        x = Einsum(
            "TC,CD->TD",
            (o, o),
            ("mlp", "embed"),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="proj",
        )(x)
        x = LayerNorm(cfg.layer_norm_eps, param_dtype=pdtype, name="post_projection_norm")(x)
        x = jax.nn.gelu(x, approximate=False)
        return SwiGLU(o, cfg.merger_ffw_dim, dtype, pdtype, self.dot_general, name="mlp")(x)


class Glm4vVisionTower(nn.Module):
    """pixel_values f32[P, patch_dim], static image_grid_thw [n, 3] -> f32[P/4, out_hidden_size].

    `attention_fn` replaces the per-image dense attention (for example with a fused kernel
    taking segment ids or cu_seqlens from the layout); `dot_general` is handed to every matmul
    (QAT, quantized inference).
    """

    config: VisionConfig
    attention_fn: AttentionFn = per_image_attention
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, pixel_values: Array, image_grid_thw: Any) -> Array:
        cfg = self.config
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        grid = grid_tuple(image_grid_thw)
        if not grid:
            raise ValueError("image_grid_thw is empty: there are no images to encode")
        layout = vision_layout(grid, cfg.spatial_merge_size)
        if pixel_values.ndim != 2 or pixel_values.shape[1] != cfg.patch_dim:
            raise ValueError(
                f"pixel_values must have shape [num_patches, {cfg.patch_dim}], "
                f"got {pixel_values.shape}"
            )
        if pixel_values.shape[0] != layout.num_patches:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} patches but image_grid_thw "
                f"{[list(g) for g in grid]} describes {layout.num_patches}"
            )

        # Conv3d with kernel == stride over a (C, T, 14, 14) patch is a Linear over 1176.
        x = Einsum(
            "PC,CD->PD",
            (cfg.patch_dim, cfg.d_model),
            (None, "embed"),
            bias_shape=(cfg.d_model,),
            bias_axes=("embed",),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="patch_embed",
        )(pixel_values)
        x = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="post_conv_layernorm")(x)

        table = self.param(
            "position_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (cfg.position_grid**2, cfg.d_model),
            pdtype,
        )
        pos = self._resampled_positions(table, grid)
        x = x + pos.astype(pdtype).astype(x.dtype)

        cos, sin = vision_rope(
            jnp.asarray(layout.h_pos), jnp.asarray(layout.w_pos), cfg.head_dim, cfg.rope_theta
        )
        for i in range(cfg.depth):
            x = VisionBlock(cfg, self.attention_fn, self.dot_general, name=f"blocks_{i}")(
                x, cos, sin, layout
            )
        x = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="post_layernorm")(x)

        # Each run of merge^2 consecutive patches is one 2x2 block (HF order): a Conv2d with
        # kernel == stride. X, Y: row and column inside the window; E: out_hidden_size.
        m = cfg.spatial_merge_size
        x = x.reshape(-1, m, m, cfg.d_model)
        x = Einsum(
            "TXYD,XYDO->TO",
            (m, m, cfg.d_model, cfg.out_hidden_size),
            (None, None, "embed", "mlp"),
            bias_shape=(cfg.out_hidden_size,),
            bias_axes=("mlp",),
            dtype=dtype,
            param_dtype=pdtype,
            dot_general=self.dot_general,
            name="downsample",
        )(x)
        return PatchMerger(cfg, self.dot_general, name="merger")(x)

    def _resampled_positions(self, table: Array, grid: Grid) -> Array:
        """f32[P, D]: the G x G table resampled bicubically to each frame's (h, w), in HF order."""
        cfg = self.config
        g, d = cfg.position_grid, cfg.d_model
        table2d = table.astype(jnp.float32).reshape(g, g, d)
        parts = []
        for t, h, w in grid:
            rows = jnp.asarray(bicubic_resample_matrix(h, g))  # [h, G]
            cols = jnp.asarray(bicubic_resample_matrix(w, g))  # [w, G]
            # Row pass then column pass, both in fp32 (y, x: target row, column).
            resampled = jnp.einsum(
                "yI,IJD->yJD", rows, table2d, precision=jax.lax.Precision.HIGHEST
            )
            resampled = jnp.einsum(
                "xJ,yJD->yxD", cols, resampled, precision=jax.lax.Precision.HIGHEST
            )
            hpos, wpos = merge_block_positions(h, w, cfg.spatial_merge_size)
            frame = resampled.reshape(h * w, d)[jnp.asarray(hpos * w + wpos)]
            parts.extend([frame] * t)
        if not parts:
            return jnp.zeros((0, d), jnp.float32)
        return jnp.concatenate(parts, axis=0)


def count_params(params: Any) -> int:
    """Number of scalars in a params tree (works on ShapeDtypeStructs from eval_shape)."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
