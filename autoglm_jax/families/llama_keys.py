"""HF <-> Flax tensor maps for LlamaForCausalLM on the GLM decoder.

A Llama checkpoint is laid out as a Qwen2 one without the q/k/v biases: the same names, the
same rotate_half q/k rows (permuted per head into our interleaved order) and the same separate
gate_proj and up_proj (slices of our fused gate_up_proj). So the maps are Qwen2's
(`qwen2_keys`) less the biases; Llama configs with biases are refused by the config reader.
"""

from __future__ import annotations

from autoglm_jax.config import TextConfig
from autoglm_jax.families import qwen2_keys
from autoglm_jax.families.keymap import TensorMap


def hf_tensor_maps(c: TextConfig) -> list[TensorMap]:
    """Every tensor of a LlamaForCausalLM (`model.*` and `lm_head.weight` when untied)."""
    return [m for m in qwen2_keys.hf_tensor_maps(c) if not m.hf_key.endswith(".bias")]
