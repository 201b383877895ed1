"""What the scheduler hands the runner: one plain-data description per scheduled sequence.

The runner builds its padded device arrays from these alone; it never sees a `Request` (its
queues, media handles or token lists), as in vLLM's scheduler output.

    seqs = describe(scheduler_output.chunks, mrope=True)
    runner.dispatch(seqs, sampling)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from autoglm_jax.engine.multimodal import token_positions
from autoglm_jax.engine.scheduler import Request, ScheduledChunk


@dataclasses.dataclass(frozen=True)
class SeqStep:
    """One sequence's share of a step."""

    token_ids: np.ndarray  # i32[n]: the tokens computed this step
    positions: np.ndarray  # i32[n], or i32[3, n] under M-RoPE
    slot: int  # the sequence's slot: its penalty rows and CGA memory row
    pages: np.ndarray  # i32[p]: its page table (every page up to kv_len)
    kv_len: int  # KV length after this step (start + n)
    samples: bool  # whether a token is sampled at its last position
    prev_index: int = -1  # its last token is the previous step's sample of this row; -1: known
    image_embeds: Any = None  # f32/bf16[k, D]: rows for this step's image tokens, in order
    image_index: np.ndarray | None = None  # i32[n]: row into image_embeds per token, -1 none

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


def describe(
    chunks: Sequence[ScheduledChunk], mrope: bool, previous: Mapping[Request, int] = {}
) -> list[SeqStep]:
    """The plain-data step of the scheduler's chunks (positions, pages, image rows).
    `previous`: request -> its row in the step before, whose sample may be the last token
    of its chunk (still pending on the device)."""
    out = []
    for c in chunks:
        r = c.request
        prev_index = -1
        if r.num_pending and c.start + c.num_tokens > r.num_tokens - r.num_pending:
            if r.num_pending > 1 or r not in previous:
                raise RuntimeError(f"{r.request_id}: a pending token is not the last step's")
            prev_index = previous[r]
        image_embeds = image_index = None
        mm = r.mm
        if mm is not None and mm.image_ordinal is not None:
            ordinal = mm.image_ordinal[c.start : c.start + c.num_tokens]
            ordinal = np.pad(ordinal, (0, c.num_tokens - len(ordinal)), constant_values=-1)
            used = ordinal >= 0
            if used.any():
                image_embeds = mm.image_embeds[ordinal[used]]
                image_index = np.where(used, np.cumsum(used) - 1, -1).astype(np.int32)
        out.append(
            SeqStep(
                token_ids=np.asarray(r.all_token_ids[c.start : c.start + c.num_tokens], np.int32),
                positions=token_positions(
                    mm, c.start, c.num_tokens, len(r.prompt_token_ids), mrope
                ),
                slot=r.slot,
                pages=np.asarray(r.pages, np.int32),
                kv_len=c.start + c.num_tokens,
                samples=c.samples,
                prev_index=prev_index,
                image_embeds=image_embeds,
                image_index=image_index,
            )
        )
    return out
