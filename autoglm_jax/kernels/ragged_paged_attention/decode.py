"""Decode attention: a Pallas (Triton) kernel for steps where every sequence has one query token.

Why a second kernel. The work on a tile is the ragged kernel's (`attend_rows`, shared);
what differs is around it. A decode step's layout is fixed by the contract, so a program
needs nothing but its grid position: the ragged kernel's query-block schedule (a handful
of small XLA ops per call, each a launch, a searchsorted among them) is skipped. Block size
and split count come from a table per GPU generation and the device's SM count
(decode_block_sizes.py) instead of the ragged kernel's shape-only table.

Contract (the caller's static promise, `decode_only=True` in the dispatcher): sequence s
< num_seqs[0] owns exactly q row s (cu_q_lens[:num_seqs + 1] == arange, as the engine's
runner builds it for an all-decode step); every other row is padding and gets zeros.
cu_q_lens is therefore not read. Its query is the last of its kv_lens[s] positions, so it
sees all of its keys and needs no causal mask, only a length mask on the last block.

Layout. One program = one sequence x one KV head [x one split]. Its tile is the G query
heads that share that KV head, [Gp, Hp]: G padded to a power of two and at least 16 rows,
the smallest M of a tensor-core MMA, so `pl.dot` runs on the MMA units instead of being a
matrix-vector product per head; K/V are read once per group. head_dim is padded to a power
of two in registers (80 -> 128) with masked loads; nothing is padded in memory. The program
walks its keys `block_k` at a time; each key's page comes from the page table by an indexed
load, and K/V rows are loaded straight from the pool (no gather into a dense array). int8
pages are cast to q's dtype in registers: K scales multiply the logits' columns, V scales
the probabilities. Softmax is online, in float32, base 2.

Splits (flash-decoding). With few sequences, T x K programs cannot fill the GPU, so each
sequence's key blocks are shared out over `num_splits` programs that write unnormalised f32
partials (acc, running max, denominator); `merge_splits` combines them exactly (a rescale by
exp2(m_i - max m), no approximation). Empty splits (short sequences) write m = float32 min
and l = 0, which the merge weighs by zero.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from autoglm_jax.kernels.ragged_paged_attention.block_sizes import MIN_ROWS, next_pow2
from autoglm_jax.kernels.ragged_paged_attention.decode_block_sizes import (
    DecodeBlockSizes,
    get_decode_block_sizes,
)
from autoglm_jax.kernels.ragged_paged_attention.kernel import KVRefs, attend_rows, run_kernel
from autoglm_jax.kernels.ragged_paged_attention.validation import validate_inputs


def group_rows(queries_per_kv_head: int) -> int:
    """Rows of a program's q tile: G as a power of two, at least the MMA minimum."""
    return max(MIN_ROWS, next_pow2(queries_per_kv_head))


def _decode_kernel(
    kv_lens_ref,  # i32[S]
    num_seqs_ref,  # i32[1]
    q_ref,  # [T, N, H]
    *refs,  # KVRefs fields, then o [T, N, H]; or acc f32[splits, T, N, H], m, l f32[splits, T, N]
    sm_scale: float,
    block_k: int,
    group: int,
    num_splits: int,
):
    row, kv_head = pl.program_id(0), pl.program_id(1)
    kv, out_refs = KVRefs(*refs[:5]), refs[5:]
    page_size = kv.k_pages.shape[1]
    num_slots, pages_per_seq = kv.block_tables.shape

    # Row t is sequence t; rows past num_seqs (or past the sequence bucket when T > S) are
    # padding with no keys, so their programs skip both loops and store zeros.
    seq = jnp.minimum(row, num_slots - 1)
    live = (row < num_seqs_ref[0]) & (row < num_slots)
    # Clamped to the page table's reach so no key position indexes past a table row.
    kv_len = jnp.where(live, jnp.clip(kv_lens_ref[seq], 0, pages_per_seq * page_size), 0)

    g = jnp.arange(group_rows(group), dtype=jnp.int32)
    # The query is the last position: every row sees keys <= kv_len - 1, so only the last
    # block (past kv_len // block_k) is masked, and a split sees at most that one.
    attend_rows(
        q_ref,
        out_refs,
        kv,
        tok=jnp.full(g.shape, row, jnp.int32),
        head=kv_head * group + g,
        row_ok=g < group,
        q_pos=jnp.full(g.shape, kv_len - 1, jnp.int32),
        seq=seq,
        kv_head=kv_head,
        kv_len=kv_len,
        kv_hi=kv_len,
        kv_full=kv_len,
        block_k=block_k,
        sm_scale=sm_scale,
        num_splits=num_splits,
    )


def paged_attention_decode(
    q: jax.Array,  # [T, N, H]
    k_pages: jax.Array,  # [P, page, K, H] (int8 if quantized)
    v_pages: jax.Array,  # [P, page, K, H]
    kv_lens: jax.Array,  # i32[S]
    block_tables: jax.Array,  # i32[S, max_pages]
    cu_q_lens: jax.Array,  # i32[S + 1], not read: fixed to arange by the decode contract
    num_seqs: jax.Array,  # i32[1]
    *,
    sm_scale: float,
    k_scales: jax.Array | None = None,  # f32[P, page, K]
    v_scales: jax.Array | None = None,  # f32[P, page, K]
    interpret: bool = False,
    block_sizes: DecodeBlockSizes | None = None,
) -> jax.Array:  # [T, N, H], zeros on padding rows
    """Unjitted decode attention (usable inside a caller's jit); the module docstring gives the
    contract. Same arguments as `ragged_paged_attention_pallas`. `block_sizes=None` reads
    the table for this device's GPU generation (decode_block_sizes.py).
    """
    dims = validate_inputs(
        q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs, k_scales, v_scales
    )
    t, n, h = dims.num_tokens, dims.num_q_heads, dims.head_dim
    if block_sizes is None:
        block_sizes = get_decode_block_sizes(
            head_dim=h,
            page_size=dims.page_size,
            num_q_heads=n,
            num_kv_heads=dims.num_kv_heads,
            num_tokens=t,
            pages_per_seq=dims.pages_per_seq,
        )
    bs = block_sizes
    kernel = functools.partial(
        _decode_kernel,
        sm_scale=float(sm_scale),
        block_k=bs.block_k,
        group=dims.queries_per_kv_head,
        num_splits=bs.num_splits,
    )
    return run_kernel(
        kernel,
        (kv_lens, num_seqs, q, k_pages, v_pages, k_scales, v_scales, block_tables),
        q=q,
        grid=(t, dims.num_kv_heads),
        num_splits=bs.num_splits,
        num_warps=bs.num_warps,
        num_stages=bs.num_stages,
        interpret=interpret,
        name=f"paged_attention_decode_bk{bs.block_k}_s{bs.num_splits}",
    )
