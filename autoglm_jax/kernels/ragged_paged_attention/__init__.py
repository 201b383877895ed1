"""Ragged paged attention: Pallas (Triton) kernel, XLA path, reference, validation."""

from autoglm_jax.kernels.ragged_paged_attention.block_sizes import BlockSizes, get_block_sizes
from autoglm_jax.kernels.ragged_paged_attention.kernel import (
    make_schedule,
    ragged_paged_attention,
    ragged_paged_attention_pallas,
)
from autoglm_jax.kernels.ragged_paged_attention.reference import ragged_paged_attention_reference
from autoglm_jax.kernels.ragged_paged_attention.validation import validate_inputs
from autoglm_jax.kernels.ragged_paged_attention.xla import ragged_paged_attention_xla

__all__ = [
    "BlockSizes",
    "get_block_sizes",
    "make_schedule",
    "ragged_paged_attention",
    "ragged_paged_attention_pallas",
    "ragged_paged_attention_reference",
    "ragged_paged_attention_xla",
    "validate_inputs",
]
