"""Block sizes for the ragged paged attention kernel: a small table plus two heuristics.

The table is keyed by (padded head dim, page size). Its entries are starting points chosen
from the Triton flash-attention and vLLM Triton paged-attention defaults, not yet tuned on
hardware; `python -m infer bench-attention` on the target GPU is the way to revise them.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Static tiling of one ragged paged attention call.

    A program of the kernel handles `block_q` query tokens of one sequence for one KV head,
    i.e. `block_q * next_pow2(queries_per_kv_head)` rows of the score matrix, and walks the
    sequence's KV in tiles of `block_k` keys. With `num_kv_splits > 1` the KV range of each
    query block is cut into that many pieces handled by separate programs (flash-decoding)
    and merged afterwards; this only pays off when there are too few query blocks to fill
    the GPU (small decode batches at long context).
    """

    block_q: int  # query tokens per program
    block_k: int  # keys per inner-loop tile; a power of two
    num_kv_splits: int = 1  # programs sharing one query block's KV range
    num_warps: int = 4  # Triton launch parameter
    num_stages: int = 2  # Triton software-pipelining depth

    def __post_init__(self):
        if self.block_q < 1:
            raise ValueError(f"block_q must be >= 1, got {self.block_q}")
        if self.block_k < 16 or self.block_k & (self.block_k - 1):
            raise ValueError(f"block_k must be a power of two >= 16, got {self.block_k}")
        if self.num_kv_splits < 1:
            raise ValueError(f"num_kv_splits must be >= 1, got {self.num_kv_splits}")


@dataclasses.dataclass(frozen=True)
class _Entry:
    prefill_rows: int  # score rows per program (block_q * padded group) for prefill-heavy calls
    block_k: int
    num_warps: int
    num_stages: int


# (head_dim rounded up to a power of two, page_size) -> entry.
_TABLE: dict[tuple[int, int], _Entry] = {
    (64, 16): _Entry(prefill_rows=128, block_k=64, num_warps=4, num_stages=2),
    (64, 32): _Entry(prefill_rows=128, block_k=64, num_warps=4, num_stages=2),
    (64, 64): _Entry(prefill_rows=128, block_k=64, num_warps=4, num_stages=2),
    (64, 128): _Entry(prefill_rows=128, block_k=128, num_warps=4, num_stages=2),
    (128, 16): _Entry(prefill_rows=64, block_k=64, num_warps=4, num_stages=2),
    (128, 32): _Entry(prefill_rows=64, block_k=64, num_warps=4, num_stages=2),
    (128, 64): _Entry(prefill_rows=64, block_k=64, num_warps=4, num_stages=2),
    (128, 128): _Entry(prefill_rows=64, block_k=128, num_warps=8, num_stages=2),
}
_DEFAULT = _Entry(prefill_rows=64, block_k=64, num_warps=4, num_stages=2)

# Triton's tl.dot wants every operand dimension >= 16.
MIN_ROWS = 16
# Enough programs to give each SM of an H100/H200 (132 SMs) or RTX 4090 (128 SMs) about two.
_TARGET_PROGRAMS = 256
_MAX_SPLITS = 64
_MIN_TILES_PER_SPLIT = 2
# Cap on the f32 partial outputs of a split call: splits * T * Hq * D * 4 bytes.
_MAX_SPLIT_BYTES = 64 << 20


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def num_query_blocks(num_tokens: int, num_seqs: int, block_q: int) -> int:
    """Static upper bound on the query blocks of any ragged layout of T tokens in S sequences.

    Tokens split into at most min(S, T) sequences plus the padding tail, each part rounded up
    to whole blocks: sum ceil(len_i / bq) <= floor((T + parts * (bq - 1)) / bq).
    """
    parts = min(num_seqs, num_tokens) + 1
    return max(1, (num_tokens + parts * (block_q - 1)) // block_q)


def get_block_sizes(
    *,
    head_dim: int,
    page_size: int,
    queries_per_kv_head: int,
    num_kv_heads: int,
    num_tokens: int,
    num_seqs: int,
    pages_per_seq: int,
) -> BlockSizes:
    """Block sizes for a call with these static shapes.

    A call whose token bucket is no larger than its sequence bucket is decode-like (about one
    token per sequence): its programs get the minimum of 16 rows (one token at G = 16) so few
    rows are wasted, and KV splits make up for a short grid. Other calls use the table's
    prefill rows.
    """
    entry = _TABLE.get((next_pow2(head_dim), page_size), _DEFAULT)
    group = next_pow2(queries_per_kv_head)
    decode_like = num_tokens <= num_seqs
    rows = MIN_ROWS if decode_like else entry.prefill_rows
    block_q = max(1, rows // group)
    block_k = entry.block_k
    blocks = num_query_blocks(num_tokens, num_seqs, block_q)
    programs = blocks * num_kv_heads
    splits = 1
    if programs < _TARGET_PROGRAMS:
        max_tiles = max(1, -(-pages_per_seq * page_size // block_k))
        splits = min(
            _MAX_SPLITS, -(-_TARGET_PROGRAMS // programs), max(1, max_tiles // _MIN_TILES_PER_SPLIT)
        )
        per_split = num_tokens * num_kv_heads * queries_per_kv_head * head_dim * 4
        splits = max(1, min(splits, _MAX_SPLIT_BYTES // max(1, per_split)))
    return BlockSizes(
        block_q=block_q,
        block_k=block_k,
        num_kv_splits=splits,
        num_warps=entry.num_warps if max(rows, group) >= 64 else 4,
        num_stages=entry.num_stages,
    )
