"""Ragged paged attention: Pallas (Triton) kernels (ragged and decode), XLA path, reference."""

from autoglm_jax.kernels.ragged_paged_attention.block_sizes import BlockSizes, get_block_sizes
from autoglm_jax.kernels.ragged_paged_attention.decode import paged_attention_decode
from autoglm_jax.kernels.ragged_paged_attention.decode_block_sizes import (
    DecodeBlockSizes,
    get_decode_block_sizes,
)
from autoglm_jax.kernels.ragged_paged_attention.dispatch import ragged_paged_attention
from autoglm_jax.kernels.ragged_paged_attention.kernel import (
    make_schedule,
    ragged_paged_attention_pallas,
)
from autoglm_jax.kernels.ragged_paged_attention.reference import ragged_paged_attention_reference
from autoglm_jax.kernels.ragged_paged_attention.validation import validate_inputs
from autoglm_jax.kernels.ragged_paged_attention.xla import ragged_paged_attention_xla

__all__ = [
    "BlockSizes",
    "DecodeBlockSizes",
    "get_block_sizes",
    "get_decode_block_sizes",
    "make_schedule",
    "paged_attention_decode",
    "ragged_paged_attention",
    "ragged_paged_attention_pallas",
    "ragged_paged_attention_reference",
    "ragged_paged_attention_xla",
    "validate_inputs",
]
