"""HF <-> Flax tensor maps for the ViT encoder (transformers' ViTModel).

Two spellings of the same tensors exist:
- "hub": the names in every published checkpoint file and what transformers' `save_pretrained`
  still writes (`encoder.layer.{i}.attention.attention.query.weight`, ...). This is the default
  and what the loader reads.
- "transformers": the module names of transformers >= 5 in memory (`model.state_dict()`), which
  it maps to and from the hub names when loading and saving (`layers.{i}.attention.q_proj...`).

A ViTForImageClassification checkpoint prefixes the encoder with `vit.` (and has no pooler);
its `classifier.*` head is not ours (`IGNORED_PREFIXES`).
"""

from __future__ import annotations

from typing import Literal

from autoglm_jax.config.vit import ViTConfig
from autoglm_jax.families.keymap import TensorMap, linear_weight, reshaped, transposed

Layout = Literal["hub", "transformers"]

IGNORED_PREFIXES = ("classifier.",)

# Our block param name -> the HF name relative to the block, per layout.
_BLOCK_NAMES: dict[str, dict[str, str]] = {
    "hub": {
        "q_proj": "attention.attention.query",
        "k_proj": "attention.attention.key",
        "v_proj": "attention.attention.value",
        "o_proj": "attention.output.dense",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
    },
    "transformers": {
        "q_proj": "attention.q_proj",
        "k_proj": "attention.k_proj",
        "v_proj": "attention.v_proj",
        "o_proj": "attention.o_proj",
        "fc1": "mlp.fc1",
        "fc2": "mlp.fc2",
    },
}
_LAYER_PREFIX = {"hub": "encoder.layer.", "transformers": "layers."}


def is_ignored(key: str) -> bool:
    """True for checkpoint keys outside the ViT encoder (a classification head)."""
    return key.startswith(IGNORED_PREFIXES)


def hf_tensor_maps(
    c: ViTConfig, *, prefix: str = "", layout: Layout = "hub", path_prefix: tuple[str, ...] = ()
) -> list[TensorMap]:
    """Every tensor of a ViTModel (the pooler only when `c.add_pooling_layer`). `prefix` is ""
    for ViTModel and "vit." for ViTForImageClassification; `path_prefix` nests the params."""
    if layout not in _BLOCK_NAMES:
        raise ValueError(f"unknown ViT key layout {layout!r} (expected 'hub' or 'transformers')")
    d, f, n, h = c.d_model, c.ffw_dim, c.num_heads, c.head_dim
    p, e = path_prefix, (*path_prefix, "embeddings")
    maps = [
        reshaped(f"{prefix}embeddings.cls_token", (*e, "cls_token"), (d,), (1, 1, d)),
        reshaped(
            f"{prefix}embeddings.position_embeddings",
            (*e, "position_embeddings"),
            (c.seq_len, d),
            (1, c.seq_len, d),
        ),
        # torch Conv2d weight [D, C, X, Y] -> our [C, X, Y, D]
        transposed(
            f"{prefix}embeddings.patch_embeddings.projection.weight",
            (*e, "patch_embeddings", "kernel"),
            (1, 2, 3, 0),
        ),
        TensorMap(
            f"{prefix}embeddings.patch_embeddings.projection.bias", (*e, "patch_embeddings", "bias")
        ),
        TensorMap(f"{prefix}layernorm.weight", (*p, "layernorm", "scale")),
        TensorMap(f"{prefix}layernorm.bias", (*p, "layernorm", "bias")),
    ]
    names = _BLOCK_NAMES[layout]
    for i in range(c.num_layers):
        hf, fx = f"{prefix}{_LAYER_PREFIX[layout]}{i}.", (*p, f"layers_{i}")
        attn = (*fx, "attention")
        for name in ("q_proj", "k_proj", "v_proj"):
            maps.append(
                linear_weight(f"{hf}{names[name]}.weight", (*attn, name, "kernel"), (d,), (n, h))
            )
            if c.qkv_bias:
                maps.append(
                    reshaped(f"{hf}{names[name]}.bias", (*attn, name, "bias"), (n, h), (n * h,))
                )
        maps.append(
            linear_weight(
                f"{hf}{names['o_proj']}.weight", (*attn, "o_proj", "kernel"), (n, h), (d,)
            )
        )
        maps.append(TensorMap(f"{hf}{names['o_proj']}.bias", (*attn, "o_proj", "bias")))
        maps.append(linear_weight(f"{hf}{names['fc1']}.weight", (*fx, "fc1", "kernel"), (d,), (f,)))
        maps.append(TensorMap(f"{hf}{names['fc1']}.bias", (*fx, "fc1", "bias")))
        maps.append(linear_weight(f"{hf}{names['fc2']}.weight", (*fx, "fc2", "kernel"), (f,), (d,)))
        maps.append(TensorMap(f"{hf}{names['fc2']}.bias", (*fx, "fc2", "bias")))
        for norm in ("layernorm_before", "layernorm_after"):
            maps.append(TensorMap(f"{hf}{norm}.weight", (*fx, norm, "scale")))
            maps.append(TensorMap(f"{hf}{norm}.bias", (*fx, norm, "bias")))
    if c.add_pooling_layer:
        maps.append(
            linear_weight(
                f"{prefix}pooler.dense.weight", (*p, "pooler", "kernel"), (d,), (c.pooler_width,)
            )
        )
        maps.append(TensorMap(f"{prefix}pooler.dense.bias", (*p, "pooler", "bias")))
    return maps
