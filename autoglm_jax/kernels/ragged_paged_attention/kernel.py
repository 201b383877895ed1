"""Ragged paged attention as a Pallas kernel for the Triton (GPU) lowering.

Layout. One program handles `block_q` consecutive query tokens of one sequence for one KV
head: all G query heads sharing that KV head are processed together, so K/V tiles are read
once per group. Its rows are (token, head) pairs, `block_q * Gp` of them (Gp = G rounded up
to a power of two, as Triton wants power-of-two tiles; the extra rows are masked). The
program walks the sequence's KV in tiles of `block_k` keys with an online (flash) softmax in
float32, looking up each key's page in the block table, and stops at the last key visible
to its last token (causal). Tiles visible to every row of the block skip the mask.

Grid: (query blocks, KV heads[, KV splits]). The number of query blocks is a static upper
bound (`num_query_blocks`); which sequence and rows each block owns is a small int32
schedule computed with jnp from the traced metadata (`make_schedule`). Rows past
cu_q_lens[num_seqs] form one more pseudo-sequence with no KV, so every output row is
written (padding rows get zeros) and no epilogue pass is needed. Spare blocks own no rows.

KV splits (flash-decoding): with few query blocks, each block's KV range is cut into
`num_kv_splits` pieces run by separate programs that write unnormalised partial results,
merged by a small jnp epilogue.

Loads and stores use array indices (pointer tensors in Triton) with masks for padded
rows, padded head_dim (80 -> 128) and keys past the sequence; page ids are clamped to the
pool, so bad metadata never reads out of bounds. int8 pages are dequantized inside the
kernel: K scales multiply the logits' columns, V scales the probabilities.

A program's work after its rows are known (load q, the online softmax over its tiles, the
store) is `attend_rows`, which the decode kernel (decode.py) shares; `run_kernel` is the
shared pallas_call plus split merge.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from autoglm_jax.kernels.ragged_paged_attention.block_sizes import (
    MIN_ROWS,
    BlockSizes,
    get_block_sizes,
    next_pow2,
    num_query_blocks,
)
from autoglm_jax.kernels.ragged_paged_attention.validation import validate_inputs

# Finite stand-ins for -inf keep fully masked rows NaN-free.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
M_INIT = float(jnp.finfo(jnp.float32).min)
LOG2E = math.log2(math.e)

# Rows of the schedule array.
SCHED_SEQ, SCHED_ROW0, SCHED_ROW_END, SCHED_KV_LEN = range(4)


def make_schedule(
    kv_lens: jax.Array,  # i32[S]
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
    *,
    num_tokens: int,
    block_q: int,
    num_blocks: int,
) -> jax.Array:  # i32[4, num_blocks]
    """Which rows each query block owns: rows SCHED_SEQ (sequence, for its block table),
    SCHED_ROW0 (first q row), SCHED_ROW_END (end of its sequence's rows, exclusive) and
    SCHED_KV_LEN (the sequence's KV length; 0 for the padding tail and spare blocks).

    Blocks are handed out sequence by sequence, ceil(q_len / block_q) each, then the padding
    tail [cu_q_lens[num_seqs], T); spare blocks get ROW0 = ROW_END = T. Everything is clipped
    to [0, T] so inconsistent metadata cannot index out of bounds.
    """
    t = num_tokens
    s = kv_lens.shape[0]
    n = jnp.clip(num_seqs[0], 0, s)
    live = jnp.arange(s) < n
    q_start = jnp.clip(cu_q_lens[:-1], 0, t)
    q_end = jnp.where(live, jnp.clip(cu_q_lens[1:], q_start, t), q_start)
    tail_start = jnp.clip(cu_q_lens[n], 0, t)
    part_start = jnp.concatenate([q_start, tail_start[None]])  # [S + 1]
    part_end = jnp.concatenate([q_end, jnp.full((1,), t, jnp.int32)])
    part_kv = jnp.concatenate(
        [jnp.where(live, jnp.maximum(kv_lens, 0), 0), jnp.zeros((1,), jnp.int32)]
    )
    part_seq = jnp.concatenate([jnp.arange(s, dtype=jnp.int32), jnp.zeros((1,), jnp.int32)])
    n_blocks = (part_end - part_start + block_q - 1) // block_q
    blk_end = jnp.cumsum(n_blocks)
    blk_begin = blk_end - n_blocks
    b = jnp.arange(num_blocks, dtype=jnp.int32)
    owner = jnp.searchsorted(blk_end, b, side="right").astype(jnp.int32)
    used = owner <= s
    owner = jnp.minimum(owner, s)
    row0 = part_start[owner] + (b - blk_begin[owner]) * block_q
    return jnp.stack(
        [
            jnp.where(used, part_seq[owner], 0),
            jnp.where(used, row0, t),
            jnp.where(used, part_end[owner], t),
            jnp.where(used, part_kv[owner], 0),
        ]
    ).astype(jnp.int32)


class KVRefs(NamedTuple):
    """The pool and page table, as a kernel receives them."""

    k_pages: Any  # [P, page, K, H]
    v_pages: Any  # [P, page, K, H]
    k_scales: Any  # f32[P, page, K] or None
    v_scales: Any  # f32[P, page, K] or None
    block_tables: Any  # i32[S, max_pages]


def _attend_tile(j, carry, *, masked, q, q_pos, kv_len, seq, kv_head, kv: KVRefs, block_k, scale):
    """Folds key tile j of sequence `seq` into the online softmax of q's rows ([R, Hp])."""
    acc, m_prev, l_prev = carry
    num_pages, page_size, _, head_dim = kv.k_pages.shape
    pages_per_seq = kv.block_tables.shape[1]
    compute_dtype = q.dtype
    precision = lax.Precision.HIGHEST if compute_dtype == jnp.float32 else None
    d = jnp.arange(q.shape[1], dtype=jnp.int32)
    d_ok = d < head_dim
    kpos = j * block_k + jnp.arange(block_k, dtype=jnp.int32)  # [BK]
    slot = jnp.minimum(lax.div(kpos, page_size), pages_per_seq - 1)
    # Keys of one page read the same table entry: a cached load, not a gather of K/V.
    page = jnp.clip(kv.block_tables[seq, slot], 0, num_pages - 1)
    off = lax.rem(kpos, page_size)
    k_ok = kpos < kv_len
    kv_mask = (k_ok[:, None] & d_ok[None, :]) if masked else d_ok[None, :]
    kv_idx = (page[:, None], off[:, None], kv_head, d[None, :])
    k = plgpu.load(kv.k_pages.at[kv_idx], mask=kv_mask, other=0)
    v = plgpu.load(kv.v_pages.at[kv_idx], mask=kv_mask, other=0)
    # int8 tiles become q's dtype in registers; their scales apply to the logits' columns (K)
    # and to the probabilities (V).
    logits = plgpu.dot(q, k.astype(compute_dtype), trans_b=True, precision=precision)
    if kv.k_scales is not None:
        k_scale = plgpu.load(kv.k_scales.at[page, off, kv_head], mask=k_ok, other=0.0)
        logits = logits * k_scale[None, :]
    logits = logits * scale  # base-2 softmax
    if masked:
        visible = kpos[None, :] <= q_pos[:, None]  # [R, BK]; q_pos < kv_len
        logits = jnp.where(visible, logits, MASK_VALUE)
    m_next = jnp.maximum(m_prev, logits.max(axis=1))
    alpha = jnp.exp2(m_prev - m_next)
    p = jnp.exp2(logits - m_next[:, None])
    if masked:
        p = jnp.where(visible, p, 0.0)
    l_next = alpha * l_prev + p.sum(axis=1)
    if kv.v_scales is not None:
        v_scale = plgpu.load(kv.v_scales.at[page, off, kv_head], mask=k_ok, other=0.0)
        p = p * v_scale[None, :]
    pv = plgpu.dot(p.astype(compute_dtype), v.astype(compute_dtype), precision=precision)
    return acc * alpha[:, None] + pv, m_next, l_next


def attend_rows(
    q_ref,  # [T, N, H]
    out_refs,  # o [T, N, H]; or acc f32[splits, T, N, H], m, l f32[splits, T, N]
    kv: KVRefs,
    *,
    tok,  # i32[R] query token of each tile row
    head,  # i32[R] query head of each tile row
    row_ok,  # bool[R] rows to load and store
    q_pos,  # i32[R] each row's position in the sequence's keys
    seq,  # the sequence (block-table row) all rows belong to
    kv_head,
    kv_len,
    kv_hi,  # keys [0, kv_hi) are visible to some row...
    kv_full,  # ...and [0, kv_full) to every row (no mask needed)
    block_k: int,
    sm_scale: float,
    num_splits: int,
):
    """One program's work, shared by the ragged and decode kernels: load the [R, Hp] q tile,
    run an online softmax (f32, base 2) over this split's share of the key tiles, and store
    the normalised output or, with splits, this split's partial (acc, m, l)."""
    head_dim = q_ref.shape[2]
    d = jnp.arange(next_pow2(head_dim), dtype=jnp.int32)
    idx = (tok[:, None], head[:, None], d[None, :])
    mask = row_ok[:, None] & (d < head_dim)[None, :]
    q = plgpu.load(q_ref.at[idx], mask=mask, other=0)  # [R, Hp]

    lo, hi = 0, lax.div(kv_hi + block_k - 1, block_k)
    if num_splits > 1:
        per_split = lax.div(hi + num_splits - 1, num_splits)
        lo = jnp.minimum(pl.program_id(2) * per_split, hi)
        hi = jnp.minimum(lo + per_split, hi)
    tile = functools.partial(
        _attend_tile,
        q=q,
        q_pos=q_pos,
        kv_len=kv_len,
        seq=seq,
        kv_head=kv_head,
        kv=kv,
        block_k=block_k,
        scale=sm_scale * LOG2E,
    )
    carry = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.full(q.shape[:1], M_INIT, jnp.float32),
        jnp.zeros(q.shape[:1], jnp.float32),
    )
    mid = jnp.clip(lax.div(kv_full, block_k), lo, hi)
    carry = lax.fori_loop(lo, mid, functools.partial(tile, masked=False), carry)
    acc, m, l = lax.fori_loop(mid, hi, functools.partial(tile, masked=True), carry)

    if num_splits == 1:
        (o_ref,) = out_refs
        o = acc / jnp.where(l == 0.0, 1.0, l)[:, None]
        plgpu.store(o_ref.at[idx], o.astype(o_ref.dtype), mask=mask)
        return
    acc_ref, m_ref, l_ref = out_refs
    split = pl.program_id(2)
    plgpu.store(acc_ref.at[(split,) + idx], acc, mask=mask)
    plgpu.store(m_ref.at[split, tok, head], m, mask=row_ok)
    plgpu.store(l_ref.at[split, tok, head], l, mask=row_ok)


def run_kernel(body, args, *, q, grid, num_splits: int, num_warps, num_stages, interpret, name):
    """pallas_call of `body` over grid (+ a split axis), then the split merge if any.

    The output is o like q, or with splits the f32 partials acc [splits, T, N, H] and m, l
    [splits, T, N] that `merge_splits` combines.
    """
    if num_splits == 1:
        out_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
    else:
        grid = (*grid, num_splits)
        out_shape = (
            jax.ShapeDtypeStruct((num_splits, *q.shape), jnp.float32),
            jax.ShapeDtypeStruct((num_splits, *q.shape[:2]), jnp.float32),
            jax.ShapeDtypeStruct((num_splits, *q.shape[:2]), jnp.float32),
        )
    out = pl.pallas_call(
        body,
        grid=grid,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name=name,
    )(*args)
    return out if num_splits == 1 else merge_splits(*out).astype(q.dtype)


def _kernel(
    sched_ref,  # i32[4, NB]
    q_ref,  # [T, N, H]
    *refs,  # KVRefs fields, then o [T, N, H]; or acc f32[splits, T, N, H], m, l f32[splits, T, N]
    sm_scale: float,
    block_q: int,
    block_k: int,
    group: int,
    num_splits: int,
):
    blk, kv_head = pl.program_id(0), pl.program_id(1)
    kv, out_refs = KVRefs(*refs[:5]), refs[5:]
    group_p = next_pow2(group)
    rows = block_q * group_p

    seq = sched_ref[SCHED_SEQ, blk]
    row0 = sched_ref[SCHED_ROW0, blk]
    row_end = sched_ref[SCHED_ROW_END, blk]
    kv_len = sched_ref[SCHED_KV_LEN, blk]

    r = jnp.arange(rows, dtype=jnp.int32)
    tok = row0 + lax.div(r, group_p)  # [R] query token of each row
    g = lax.rem(r, group_p)
    last_tok = jnp.minimum(row0 + block_q, row_end) - 1
    # Keys [0, kv_hi) are visible to some row; [0, kv_full) to every row of the block.
    kv_hi = jnp.maximum(kv_len - (row_end - 1 - last_tok), 0)
    attend_rows(
        q_ref,
        out_refs,
        kv,
        tok=tok,
        head=kv_head * group + g,
        row_ok=(tok < row_end) & (g < group),
        q_pos=kv_len - (row_end - tok),
        seq=seq,
        kv_head=kv_head,
        kv_len=kv_len,
        kv_hi=kv_hi,
        kv_full=jnp.clip(kv_len - (row_end - row0) + 1, 0, kv_hi),
        block_k=block_k,
        sm_scale=sm_scale,
        num_splits=num_splits,
    )


def merge_splits(
    acc: jax.Array,  # f32[splits, T, N, H] unnormalised outputs
    m: jax.Array,  # f32[splits, T, N] running max (base 2)
    l: jax.Array,  # f32[splits, T, N] softmax denominators
) -> jax.Array:  # f32[T, N, H]
    """Combines per-split flash-attention partial results; rows with no keys give zeros."""
    m_all = m.max(axis=0)
    w = jnp.exp2(m - m_all[None])
    l_all = (w * l).sum(axis=0)
    o = (w[..., None] * acc).sum(axis=0)
    return o / jnp.where(l_all == 0.0, 1.0, l_all)[..., None]


def ragged_paged_attention_pallas(
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
) -> jax.Array:  # [T, N, H]
    """Unjitted body of `ragged_paged_attention` (usable inside a caller's jit)."""
    dims = validate_inputs(
        q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs, k_scales, v_scales
    )
    if block_sizes is None:
        block_sizes = get_block_sizes(
            head_dim=dims.head_dim,
            page_size=dims.page_size,
            queries_per_kv_head=dims.queries_per_kv_head,
            num_kv_heads=dims.num_kv_heads,
            num_tokens=dims.num_tokens,
            num_seqs=dims.num_seqs,
            pages_per_seq=dims.pages_per_seq,
        )
    bs = block_sizes
    rows = bs.block_q * next_pow2(dims.queries_per_kv_head)
    if not interpret and (rows < MIN_ROWS or rows & (rows - 1)):
        raise ValueError(
            f"block_q * next_pow2(queries_per_kv_head) = {rows} rows per program: Triton needs a "
            f"power of two >= {MIN_ROWS} (interpret mode accepts any)"
        )
    t = dims.num_tokens
    num_blocks = num_query_blocks(t, dims.num_seqs, bs.block_q)
    sched = make_schedule(
        kv_lens, cu_q_lens, num_seqs, num_tokens=t, block_q=bs.block_q, num_blocks=num_blocks
    )
    splits = bs.num_kv_splits
    kernel = functools.partial(
        _kernel,
        sm_scale=float(sm_scale),
        block_q=bs.block_q,
        block_k=bs.block_k,
        group=dims.queries_per_kv_head,
        num_splits=splits,
    )
    return run_kernel(
        kernel,
        (sched, q, k_pages, v_pages, k_scales, v_scales, block_tables),
        q=q,
        grid=(num_blocks, dims.num_kv_heads),
        num_splits=splits,
        num_warps=bs.num_warps,
        num_stages=bs.num_stages,
        interpret=interpret,
        name=f"ragged_paged_attention_bq{bs.block_q}_bk{bs.block_k}_s{splits}",
    )
