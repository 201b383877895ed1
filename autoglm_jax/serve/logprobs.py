"""Token strings and the two OpenAI logprobs shapes (chat's per-token list, completions' columns).

A token's string is its bytes decoded as UTF-8 with invalid sequences replaced (a character
split over tokens shows as replacement characters); chat also reports the exact bytes, as
OpenAI does. Strings are cached per server: the same tokens come back in every response.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def clamp(lp: float) -> float:
    """JSON has no -inf or NaN; vLLM reports -9999 for impossible tokens."""
    return -9999.0 if math.isnan(lp) else max(float(lp), -9999.0)


class TokenText:
    """Token id -> (string, bytes), cached; and the logprobs entries built from them."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def token(self, tid: int) -> tuple[str, list[int]]:
        hit = self._cache.get(tid)
        if hit is None:
            try:
                raw = self.tokenizer.token_bytes(tid)
            except ValueError:  # not a byte-level tokenizer
                raw = self.tokenizer.decode([tid]).encode("utf-8")
            hit = (raw.decode("utf-8", errors="replace"), list(raw))
            self._cache[tid] = hit
        return hit

    def chat(
        self, token_ids: Sequence[int], chosen: Sequence[float], tops: Sequence[dict[int, float]]
    ) -> dict[str, Any]:
        """`{"content": [{token, logprob, bytes, top_logprobs}, ...]}`, one entry per token."""
        out = []
        for tid, lp, top in zip(token_ids, chosen, tops):
            s, b = self.token(tid)
            entries = []
            for t, v in top.items():
                ts, tb = self.token(t)
                entries.append({"token": ts, "logprob": clamp(v), "bytes": tb})
            out.append({"token": s, "logprob": clamp(lp), "bytes": b, "top_logprobs": entries})
        return {"content": out}

    def completion(
        self,
        token_ids: Sequence[int],
        chosen: Sequence[float],
        tops: Sequence[dict[int, float]],
        offset: int,
    ) -> tuple[dict[str, Any], int]:
        """Completions' columns for tokens whose text starts at character `offset` of the
        choice; also the offset after them, where the next delta's tokens start."""
        tokens, offsets, top_out = [], [], []
        for tid, top in zip(token_ids, tops):
            s, _ = self.token(tid)
            tokens.append(s)
            offsets.append(offset)
            offset += len(s)
            top_out.append({self.token(t)[0]: clamp(v) for t, v in top.items()})
        return (
            {
                "tokens": tokens,
                "token_logprobs": [clamp(v) for v in chosen],
                "top_logprobs": top_out,
                "text_offset": offsets,
            },
            offset,
        )
