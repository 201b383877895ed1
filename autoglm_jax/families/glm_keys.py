"""HF <-> Flax tensor maps for the GLM decoder (GlmForCausalLM, Glm4ForCausalLM, and the
`model.language_model.*` part of Glm4vForConditionalGeneration)."""

from __future__ import annotations

from autoglm_jax.config import TextConfig
from autoglm_jax.families.keymap import TensorMap, linear_weight, reshaped


def hf_tensor_maps(
    c: TextConfig,
    *,
    prefix: str = "model.",
    head_key: str = "lm_head.weight",
    path_prefix: tuple[str, ...] = (),
) -> list[TensorMap]:
    """Every tensor of a GLM causal LM. `prefix` is "model." for glm/glm4 and
    "model.language_model." for glm4v; `path_prefix` nests the params (composites)."""
    d, f, n, k, h = c.d_model, c.ffw_dim, c.num_heads, c.num_kv_heads, c.head_dim
    p = path_prefix
    maps = [
        TensorMap(f"{prefix}embed_tokens.weight", (*p, "embed_tokens", "embedding")),
        TensorMap(f"{prefix}norm.weight", (*p, "norm", "scale")),
    ]
    if not c.tie_word_embeddings:
        maps.append(linear_weight(head_key, (*p, "lm_head", "kernel"), (d,), (c.vocab_size,)))
    norms = ["input_layernorm", "post_attention_layernorm"]
    if c.sandwich_norm:
        norms += ["post_self_attn_layernorm", "post_mlp_layernorm"]
    for i in range(c.num_layers):
        hf, fx = f"{prefix}layers.{i}.", (*p, f"layers_{i}")
        attn = (*fx, "self_attn")
        for name, heads in (("q_proj", n), ("k_proj", k), ("v_proj", k)):
            maps.append(
                linear_weight(
                    f"{hf}self_attn.{name}.weight", (*attn, name, "kernel"), (d,), (heads, h)
                )
            )
            if c.attention_bias:
                maps.append(
                    reshaped(
                        f"{hf}self_attn.{name}.bias",
                        (*attn, name, "bias"),
                        (heads, h),
                        (heads * h,),
                    )
                )
        maps.append(
            linear_weight(f"{hf}self_attn.o_proj.weight", (*attn, "o_proj", "kernel"), (n, h), (d,))
        )
        maps.append(
            linear_weight(
                f"{hf}mlp.gate_up_proj.weight", (*fx, "mlp", "gate_up_proj", "kernel"), (d,), (2, f)
            )
        )
        maps.append(
            linear_weight(
                f"{hf}mlp.down_proj.weight", (*fx, "mlp", "down_proj", "kernel"), (f,), (d,)
            )
        )
        for norm in norms:
            maps.append(TensorMap(f"{hf}{norm}.weight", (*fx, norm, "scale")))
    return maps
