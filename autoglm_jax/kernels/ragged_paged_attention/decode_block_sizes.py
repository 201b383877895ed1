"""Block sizes for the decode attention kernel: a table per GPU generation and a split rule.

The table is keyed by (GPU generation, head dim rounded up to a power of two). Entries are
starting points derived from shared-memory budgets (a [block_k, head_dim] K and V tile per
pipeline stage), not yet tuned on hardware; `python -m infer bench-attention` on the target
GPU is the way to revise them. Splits are not in the table: they follow from how many
programs a call has against how many SMs the device has (see `get_decode_block_sizes`).
"""

from __future__ import annotations

import dataclasses

import jax

from autoglm_jax.kernels.ragged_paged_attention.block_sizes import next_pow2


@dataclasses.dataclass(frozen=True)
class DecodeBlockSizes:
    """Static tiling of one decode attention call.

    A program handles one sequence's single query token for one KV head (all G query heads of
    the group as one tile) and walks its keys `block_k` at a time, `block_k / page_size`
    pages per step (4 pages at block_k 64 and page 16; a page may also span several steps).
    With `num_splits > 1` each sequence's blocks are shared out over that many programs
    (flash-decoding) whose partial results are merged afterwards.
    """

    block_k: int  # keys per inner-loop step; a power of two >= 16 (Triton tile)
    num_splits: int = 1  # programs sharing one (sequence, KV head)
    num_warps: int = 4  # Triton launch parameter
    num_stages: int = 2  # Triton software-pipelining depth

    def __post_init__(self):
        if self.block_k < 16 or self.block_k & (self.block_k - 1):
            raise ValueError(f"block_k must be a power of two >= 16, got {self.block_k}")
        if self.num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {self.num_splits}")


@dataclasses.dataclass(frozen=True)
class _Entry:
    block_k: int
    num_warps: int
    num_stages: int
    # Programs resident per SM that the split rule aims for (the grid is split until it has
    # about waves * SMs programs, rounded down so it never spills into a second, tail wave)...
    waves: int = 2
    # ...keeping at least this many key blocks per split, so each program amortises its
    # fixed cost (q load, page-table reads, the partial store) over some streaming.
    min_blocks_per_split: int = 1


# GPU generation ("sm_89" Ada, "sm_90" Hopper, "" for anything else) -> head dim bucket -> entry.
# A pipelined program holds num_stages K and V tiles of [block_k, head_dim] in shared memory:
# at head dim 128 in bf16, 64 keys x 3 stages = 96 KiB, so two programs fit in Hopper's
# 228 KiB per SM; Ada (RTX 4090) has 100 KiB per SM, so 64 keys x 2 stages (64 KiB), one
# program per SM, and the split rule aims for one.
_TABLE: dict[str, dict[int, _Entry]] = {
    "sm_90": {
        64: _Entry(block_k=128, num_warps=4, num_stages=3),
        128: _Entry(block_k=64, num_warps=4, num_stages=3),
        256: _Entry(block_k=32, num_warps=4, num_stages=3),
    },
    "sm_89": {
        64: _Entry(block_k=64, num_warps=4, num_stages=2, waves=1),
        128: _Entry(block_k=64, num_warps=4, num_stages=2, waves=1),
        256: _Entry(block_k=32, num_warps=4, num_stages=2, waves=1),
    },
    "": {
        64: _Entry(block_k=64, num_warps=4, num_stages=2),
        128: _Entry(block_k=64, num_warps=4, num_stages=2),
        256: _Entry(block_k=32, num_warps=4, num_stages=2),
    },
}
# SM counts when the device does not say: H100/H200 SXM have 132, the RTX 4090 128.
_DEFAULT_SMS = {"sm_90": 132, "sm_89": 128, "": 108}
_MAX_SPLITS = 64
# Cap on the f32 partial outputs of a split call: splits * T * N * H * 4 bytes.
_MAX_SPLIT_BYTES = 64 << 20


def device_generation(device: jax.Device | None = None) -> tuple[str, int]:
    """(generation key of the table, SM count) of `device` (default: the first device).

    Non-GPU devices (interpret mode on CPU) and unknown GPUs get the default entry.
    """
    device = device or jax.devices()[0]
    capability = str(getattr(device, "compute_capability", "") or "")
    generation = "sm_" + capability.replace(".", "") if device.platform == "gpu" else ""
    if generation not in _TABLE:
        generation = ""
    sms = getattr(device, "core_count", None) if device.platform == "gpu" else None
    return generation, int(sms or _DEFAULT_SMS[generation])


def get_decode_block_sizes(
    *,
    head_dim: int,
    page_size: int,
    num_q_heads: int,
    num_kv_heads: int,
    num_tokens: int,
    pages_per_seq: int,
    generation: str | None = None,
    sm_count: int | None = None,
) -> DecodeBlockSizes:
    """Block sizes for a decode call with these static shapes (T = num_tokens sequences).

    `generation` and `sm_count` default to the first device's. The grid has T * K programs
    before splitting; when twice that still fits in `waves` programs per SM, each
    sequence's keys are split over floor(waves * SMs / (T * K)) programs, but never so many
    that a split of the longest possible context (pages_per_seq pages) gets under
    `min_blocks_per_split` blocks, and at most 64.
    """
    if generation is None or sm_count is None:
        found_generation, found_sms = device_generation()
        generation = found_generation if generation is None else generation
        sm_count = found_sms if sm_count is None else sm_count
    row = _TABLE.get(generation, _TABLE[""])
    entry = row[min(max(next_pow2(head_dim), 64), 256)]
    programs = num_tokens * num_kv_heads
    target = entry.waves * sm_count
    max_blocks = -(-pages_per_seq * page_size // entry.block_k)
    splits = min(
        _MAX_SPLITS,
        max(1, target // programs),
        max(1, max_blocks // entry.min_blocks_per_split),
    )
    if splits > 1:
        per_split = num_tokens * num_q_heads * head_dim * 4
        splits = max(1, min(splits, _MAX_SPLIT_BYTES // per_split))
    return DecodeBlockSizes(
        block_k=entry.block_k,
        num_splits=splits,
        num_warps=entry.num_warps,
        num_stages=entry.num_stages,
    )
