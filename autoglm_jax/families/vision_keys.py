"""HF key map of the GLM-4.1V vision tower (`model.visual.*` in Glm4vForConditionalGeneration).

Layouts: Linear [out, in] -> kernel [*in, *out]; the Conv3d patch embed [D, C, T, 14, 14] is a
Linear over the flattened (C, T, 14, 14) patch, so it becomes [1176, D]; the 2x2 `downsample`
Conv2d [O, D, 2, 2] becomes [2, 2, D, O] (window row, window column, in, out).
"""

from __future__ import annotations

import numpy as np

from autoglm_jax.config.vision import VisionConfig
from autoglm_jax.families.keymap import ParamPath, TensorMap, linear_weight, reshaped, transposed


def _patch_embed(hf_key: str, path: ParamPath, cfg: VisionConfig) -> TensorMap:
    hf_shape = (
        cfg.d_model,
        cfg.in_channels,
        cfg.temporal_patch_size,
        cfg.patch_size,
        cfg.patch_size,
    )
    return TensorMap(
        hf_key,
        path,
        to_flax=lambda w: np.ascontiguousarray(w.reshape(cfg.d_model, cfg.patch_dim).T),
        to_hf=lambda k: np.ascontiguousarray(k.T).reshape(hf_shape),
    )


def hf_tensor_maps(
    config: VisionConfig, prefix: str = "model.visual.", path_prefix: ParamPath = ()
) -> list[TensorMap]:
    """One TensorMap per vision tensor of a Glm4vForConditionalGeneration checkpoint.

    `prefix` is the HF key prefix (`model.visual.`; `""` for a bare Glm4vVisionModel);
    `path_prefix` is where the tower's params sit in the enclosing tree (for example
    ("visual",) in the composite model).
    """
    c = config
    d, n, h, o = c.d_model, c.num_heads, c.head_dim, c.out_hidden_size
    p = path_prefix

    def swiglu(hf: str, path: ParamPath, width: int, ffw: int) -> list[TensorMap]:
        return [
            linear_weight(f"{hf}.{name}.weight", (*path, name, "kernel"), shape_in, shape_out)
            for name, shape_in, shape_out in (
                ("gate_proj", (width,), (ffw,)),
                ("up_proj", (width,), (ffw,)),
                ("down_proj", (ffw,), (width,)),
            )
        ]

    maps = [
        TensorMap(f"{prefix}embeddings.position_embedding.weight", (*p, "position_embedding")),
        _patch_embed(f"{prefix}patch_embed.proj.weight", (*p, "patch_embed", "kernel"), c),
        TensorMap(f"{prefix}patch_embed.proj.bias", (*p, "patch_embed", "bias")),
        TensorMap(f"{prefix}post_conv_layernorm.weight", (*p, "post_conv_layernorm", "scale")),
    ]
    for i in range(c.depth):
        hf, blk = f"{prefix}blocks.{i}", (*p, f"blocks_{i}")
        maps += [
            TensorMap(f"{hf}.norm1.weight", (*blk, "norm1", "scale")),
            TensorMap(f"{hf}.norm2.weight", (*blk, "norm2", "scale")),
            linear_weight(
                f"{hf}.attn.qkv.weight", (*blk, "attn", "qkv", "kernel"), (d,), (3, n, h)
            ),
            linear_weight(f"{hf}.attn.proj.weight", (*blk, "attn", "proj", "kernel"), (n, h), (d,)),
            *swiglu(f"{hf}.mlp", (*blk, "mlp"), d, c.ffw_dim),
        ]
        if c.attention_bias:
            maps.append(
                reshaped(f"{hf}.attn.qkv.bias", (*blk, "attn", "qkv", "bias"), (3, n, h), (3 * d,))
            )
    maps += [
        TensorMap(f"{prefix}post_layernorm.weight", (*p, "post_layernorm", "scale")),
        transposed(f"{prefix}downsample.weight", (*p, "downsample", "kernel"), (2, 3, 1, 0)),
        TensorMap(f"{prefix}downsample.bias", (*p, "downsample", "bias")),
        linear_weight(f"{prefix}merger.proj.weight", (*p, "merger", "proj", "kernel"), (o,), (o,)),
        TensorMap(
            f"{prefix}merger.post_projection_norm.weight",
            (*p, "merger", "post_projection_norm", "scale"),
        ),
        TensorMap(
            f"{prefix}merger.post_projection_norm.bias",
            (*p, "merger", "post_projection_norm", "bias"),
        ),
        *swiglu(f"{prefix}merger", (*p, "merger", "mlp"), o, c.merger_ffw_dim),
    ]
    return maps
