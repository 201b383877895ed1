"""Kernels: ragged and decode paged attention (Pallas/Triton, XLA, reference), paged KV cache."""

from autoglm_jax.kernels.kv_cache import (
    KVCache,
    dequantize_kv,
    quantize_kv,
    update_kv_cache,
    write_kv,
    write_kv_quantized,
)
from autoglm_jax.kernels.ragged_paged_attention import (
    BlockSizes,
    DecodeBlockSizes,
    get_block_sizes,
    get_decode_block_sizes,
    ragged_paged_attention,
    ragged_paged_attention_reference,
    ragged_paged_attention_xla,
    validate_inputs,
)

__all__ = [
    "BlockSizes",
    "DecodeBlockSizes",
    "KVCache",
    "dequantize_kv",
    "get_block_sizes",
    "get_decode_block_sizes",
    "quantize_kv",
    "ragged_paged_attention",
    "ragged_paged_attention_reference",
    "ragged_paged_attention_xla",
    "update_kv_cache",
    "validate_inputs",
    "write_kv",
    "write_kv_quantized",
]
