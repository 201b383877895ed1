"""HF <-> Flax tensor maps for Qwen2ForCausalLM on the GLM decoder.

Two layout changes beyond GLM's:

* Rotary pairs. Qwen2 rotates dims (i, i + H/2) by frequency i (rotate_half); our decoder
  rotates (2i, 2i+1) by frequency i (interleaved), with the same frequencies theta^(-2i/H).
  Attention scores depend on q and k only through q.k, which a common permutation of the head
  dims leaves unchanged, so the rows of q_proj and k_proj (weights and biases) are permuted per
  head on load, our dim 2i <- HF dim i and 2i+1 <- HF dim i + H/2, and back on save. v_proj and
  o_proj are untouched.
* Separate gate_proj and up_proj fill slices 0 and 1 of our fused gate_up_proj [D, 2, F]
  (`TensorMap.part`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from autoglm_jax.config import TextConfig
from autoglm_jax.families.keymap import TensorMap, linear_weight, reshaped


def rotary_order(head_dim: int) -> np.ndarray:
    """i32[H]: our head dim j holds HF (rotate_half) dim order[j]: 0, H/2, 1, H/2+1, ..."""
    half = head_dim // 2
    return np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)


def _rotary_rows(m: TensorMap, heads: int, head_dim: int) -> TensorMap:
    """m, with the HF tensor's output rows [heads * H, ...] reordered per head into our
    interleaved rotary order (and back on save)."""
    order = rotary_order(head_dim)
    inverse = np.argsort(order)

    def rows(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return x.reshape(heads, head_dim, *x.shape[1:])[:, idx].reshape(x.shape)

    return dataclasses.replace(
        m,
        to_flax=lambda w: m.to_flax(rows(w, order)),
        to_hf=lambda k: rows(m.to_hf(k), inverse),
    )


def hf_tensor_maps(c: TextConfig) -> list[TensorMap]:
    """Every tensor of a Qwen2ForCausalLM (`model.*` and `lm_head.weight`)."""
    d, f, n, k, h = c.d_model, c.ffw_dim, c.num_heads, c.num_kv_heads, c.head_dim
    maps = [
        TensorMap("model.embed_tokens.weight", ("embed_tokens", "embedding")),
        TensorMap("model.norm.weight", ("norm", "scale")),
    ]
    if not c.tie_word_embeddings:
        maps.append(linear_weight("lm_head.weight", ("lm_head", "kernel"), (d,), (c.vocab_size,)))
    for i in range(c.num_layers):
        hf, fx = f"model.layers.{i}.", (f"layers_{i}",)
        attn = (*fx, "self_attn")
        for name, heads in (("q_proj", n), ("k_proj", k), ("v_proj", k)):
            weight = linear_weight(
                f"{hf}self_attn.{name}.weight", (*attn, name, "kernel"), (d,), (heads, h)
            )
            bias = reshaped(
                f"{hf}self_attn.{name}.bias", (*attn, name, "bias"), (heads, h), (heads * h,)
            )
            if name != "v_proj":
                weight, bias = _rotary_rows(weight, heads, h), _rotary_rows(bias, heads, h)
            maps += [weight, bias]
        maps.append(
            linear_weight(f"{hf}self_attn.o_proj.weight", (*attn, "o_proj", "kernel"), (n, h), (d,))
        )
        for index, name in enumerate(("gate_proj", "up_proj")):
            part = linear_weight(
                f"{hf}mlp.{name}.weight", (*fx, "mlp", "gate_up_proj", "kernel"), (d,), (f,)
            )
            maps.append(dataclasses.replace(part, part=(1, index)))
        maps.append(
            linear_weight(
                f"{hf}mlp.down_proj.weight", (*fx, "mlp", "down_proj", "kernel"), (f,), (d,)
            )
        )
        for norm in ("input_layernorm", "post_attention_layernorm"):
            maps.append(TensorMap(f"{hf}{norm}.weight", (*fx, norm, "scale")))
    return maps
