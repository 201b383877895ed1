"""Ragged paged attention in plain XLA ops: the CPU serving path (and a GPU fallback).

Same contract and same query-block schedule as the Pallas kernel, but vectorised over all
blocks at once: each step of a while loop gathers the next tile of whole pages for every
block (`k_pages[page_ids]`, one contiguous copy per page), scores it against the block's
queries with batched einsums and folds it into an online softmax. The loop runs to the
longest block's last visible key; shorter blocks are masked. K/V are gathered once per
query block rather than once per token, and memory per step is
blocks * block_k * K * H, independent of context length.

Everything is computed in float32 (XLA:CPU has no fast bf16 dots); int8 pages are
dequantized per tile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from autoglm_jax.kernels.ragged_paged_attention.block_sizes import num_query_blocks
from autoglm_jax.kernels.ragged_paged_attention.kernel import (
    SCHED_KV_LEN,
    SCHED_ROW0,
    SCHED_ROW_END,
    SCHED_SEQ,
    make_schedule,
)
from autoglm_jax.kernels.ragged_paged_attention.validation import validate_inputs

# Einsum legend: B query blocks, T query tokens in a block, S keys in a tile, N query heads,
# K kv heads, G queries per kv head, H head dim.

_TILE_KEYS = 128  # keys per loop step (rounded to whole pages)
_PREFILL_BLOCK_Q = 8


@functools.partial(
    jax.jit, static_argnames=("sm_scale", "interpret", "block_q", "block_k", "decode_only")
)
def ragged_paged_attention_xla(
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
    block_q: int | None = None,
    block_k: int | None = None,
    decode_only: bool = False,
) -> jax.Array:  # [T, N, H], zeros on padding rows
    """Same contract as `ragged_paged_attention`; `interpret` is accepted and ignored.

    block_q: query tokens per block (default 1 for decode-like calls, T <= S, else 8).
    block_k: keys per loop step, rounded down to whole pages (default 128).
    decode_only: the caller's promise that every live sequence has one query token (as for
        the Pallas dispatcher); here it only forces block_q = 1, so a runner can pass the
        same flag to either implementation.
    """
    del interpret
    dims = validate_inputs(
        q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs, k_scales, v_scales
    )
    t, n, h = dims.num_tokens, dims.num_q_heads, dims.head_dim
    kh, g, page = dims.num_kv_heads, dims.queries_per_kv_head, dims.page_size
    if block_q is None:
        block_q = 1 if decode_only or t <= dims.num_seqs else min(_PREFILL_BLOCK_Q, t)
    pages_per_tile = max(1, min((block_k or _TILE_KEYS) // page, dims.pages_per_seq))
    tile = pages_per_tile * page
    nb = num_query_blocks(t, dims.num_seqs, block_q)
    sched = make_schedule(
        kv_lens, cu_q_lens, num_seqs, num_tokens=t, block_q=block_q, num_blocks=nb
    )
    seq, row0 = sched[SCHED_SEQ], sched[SCHED_ROW0]
    row_end, kv_len = sched[SCHED_ROW_END], sched[SCHED_KV_LEN]

    rows = row0[:, None] + jnp.arange(block_q, dtype=jnp.int32)  # [B, T]
    row_ok = rows < row_end[:, None]
    q_pos = kv_len[:, None] - (row_end[:, None] - rows)  # [B, T]
    qb = q[jnp.minimum(rows, t - 1)].astype(jnp.float32) * sm_scale
    qb = qb.reshape(nb, block_q, kh, g, h)

    # Keys [0, kv_hi) of each block are visible to at least one of its rows.
    last = jnp.minimum(row0 + block_q, row_end) - 1
    kv_hi = jnp.maximum(kv_len - (row_end - 1 - last), 0)
    num_steps = (kv_hi.max() + tile - 1) // tile
    tables = block_tables[seq]  # [B, max_pages]

    def gather(pages, page_ids, scales):
        x = pages[page_ids].astype(jnp.float32).reshape(nb, tile, kh, h)
        if scales is not None:
            x = x * scales[page_ids].reshape(nb, tile, kh)[..., None]
        return x

    def step(j, carry):
        acc, m_prev, l_prev = carry
        slots = jnp.minimum(j * pages_per_tile + jnp.arange(pages_per_tile), dims.pages_per_seq - 1)
        page_ids = jnp.clip(tables[:, slots], 0, dims.num_pages - 1)  # [B, pages_per_tile]
        k = gather(k_pages, page_ids, k_scales)  # [B, S, K, H]
        v = gather(v_pages, page_ids, v_scales)
        kpos = j * tile + jnp.arange(tile, dtype=jnp.int32)  # [S]
        visible = (kpos[None, None, :] <= q_pos[:, :, None]) & (kpos < kv_len[:, None, None])
        visible = visible[:, None, None]  # [B, 1, 1, T, S]
        # Masked keys may hold stale or uninitialised page contents: zero V there.
        v = jnp.where((kpos[None, :] < kv_len[:, None])[..., None, None], v, 0.0)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", qb, k)
        logits = jnp.where(visible, logits, -jnp.inf)
        m_next = jnp.maximum(m_prev, logits.max(axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_next), m_next, 0.0)
        p = jnp.exp(logits - m_safe[..., None])  # exactly 0 where masked
        alpha = jnp.exp(m_prev - m_safe)
        l_next = alpha * l_prev + p.sum(axis=-1)
        acc = acc * alpha[..., None] + jnp.einsum("BKGTS,BSKH->BKGTH", p, v)
        return acc, m_next, l_next

    carry = (
        jnp.zeros((nb, kh, g, block_q, h), jnp.float32),
        jnp.full((nb, kh, g, block_q), -jnp.inf, jnp.float32),
        jnp.zeros((nb, kh, g, block_q), jnp.float32),
    )
    acc, _, l = lax.fori_loop(0, num_steps, step, carry)
    o = acc / jnp.where(l == 0.0, 1.0, l)[..., None]  # [B, K, G, T, H]
    o = o.transpose(0, 3, 1, 2, 4).reshape(nb * block_q, n, h)
    dest = jnp.where(row_ok, rows, t).reshape(-1)  # rows past T are dropped
    out = jnp.zeros((t, n, h), q.dtype)
    return out.at[dest].set(o.astype(q.dtype), mode="drop")
