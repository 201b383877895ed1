"""The jitted Pallas entry point: the decode kernel for all-decode steps, the ragged kernel else.

The choice is a static argument (`decode_only`), so each compiled step program holds one
kernel and no data-dependent branch: the caller knows when it builds the step whether every
sequence in it has exactly one query token.
"""

from __future__ import annotations

import functools

import jax

from autoglm_jax.kernels.ragged_paged_attention.block_sizes import BlockSizes
from autoglm_jax.kernels.ragged_paged_attention.decode import paged_attention_decode
from autoglm_jax.kernels.ragged_paged_attention.decode_block_sizes import DecodeBlockSizes
from autoglm_jax.kernels.ragged_paged_attention.kernel import ragged_paged_attention_pallas


@functools.partial(
    jax.jit,
    static_argnames=(
        "sm_scale",
        "interpret",
        "block_sizes",
        "decode_only",
        "decode_block_sizes",
    ),
)
def ragged_paged_attention(
    q: jax.Array,  # [T, N, H]
    k_pages: jax.Array,  # [P, page, K, H] (int8 if quantized)
    v_pages: jax.Array,  # [P, page, K, H]
    kv_lens: jax.Array,  # i32[S]
    block_tables: jax.Array,  # i32[S, max_pages]
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
    *,
    sm_scale: float,
    k_scales: jax.Array | None = None,  # f32[P, page, K]
    v_scales: jax.Array | None = None,  # f32[P, page, K]
    interpret: bool = False,
    block_sizes: BlockSizes | None = None,
    decode_only: bool = False,
    decode_block_sizes: DecodeBlockSizes | None = None,
) -> jax.Array:  # [T, N, H]
    """Causal attention of ragged query chunks against a shared pool of KV pages.

    Sequence s owns q rows cu_q_lens[s]:cu_q_lens[s+1], which are the last q_len positions
    of its kv_lens[s] keys stored in pages block_tables[s]. Sequences >= num_seqs[0] and rows
    >= cu_q_lens[num_seqs[0]] are padding: their output rows are zeros. Softmax in float32.
    Nothing is donated: the only same-shaped buffer is q, which callers usually still hold.

    decode_only: the caller promises that sequence s < num_seqs[0] owns exactly q row s
    (cu_q_lens[:num_seqs + 1] == arange); the decode kernel (decode.py) runs, with
    `decode_block_sizes` or, if None, the table for this GPU (decode_block_sizes.py).
    Otherwise the ragged kernel (kernel.py) runs, with `block_sizes` or its table.
    """
    common = dict(sm_scale=sm_scale, k_scales=k_scales, v_scales=v_scales, interpret=interpret)
    args = (q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs)
    if decode_only:
        return paged_attention_decode(*args, block_sizes=decode_block_sizes, **common)
    return ragged_paged_attention_pallas(*args, block_sizes=block_sizes, **common)
