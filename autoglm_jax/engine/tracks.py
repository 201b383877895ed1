"""The host side of one request's output: detokenized text, stop strings, and what has been
streamed (the engine appends tokens; this turns them into deltas and the final output)."""

from __future__ import annotations

import dataclasses
from typing import Any

from autoglm_jax.engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from autoglm_jax.engine.scheduler import Request


@dataclasses.dataclass(eq=False)
class Track:
    """Host-side output state of one request: text, stop strings, streamed offsets."""

    request: Request
    detok: Any | None  # IncrementalDetokenizer, or None without a tokenizer
    stop_ids: frozenset[int]
    max_tokens: int
    text: str = ""
    emitted_text: int = 0  # characters of text already streamed
    emitted_tokens: int = 0  # output tokens already streamed
    logprobs: list[dict[int, float]] = dataclasses.field(default_factory=list)
    token_logprobs: list[float] = dataclasses.field(default_factory=list)
    stop_reason: str | int | None = None

    def stop_string_hit(self) -> bool:
        """Whether the text now holds one of the request's stop strings; if so, cut the text
        there (keeping the string when include_stop_str_in_output) and record it. Only the
        text that could hold a new match is searched."""
        params = self.request.params
        longest = max(len(s) for s in params.stop)
        window_start = max(0, self.emitted_text - longest)
        best = None
        for s in params.stop:
            idx = self.text.find(s, window_start)
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is None:
            return False
        idx, s = best
        self.text = self.text[: idx + (len(s) if params.include_stop_str_in_output else 0)]
        self.stop_reason = s
        return True

    def delta(self) -> StreamDelta:
        """What changed since the last delta; text that could still become a stop string is
        held back until the request finishes or it cannot."""
        r = self.request
        finished = r.is_finished
        if finished or not r.params.stop:
            upto = len(self.text)
        else:
            upto = max(self.emitted_text, len(self.text) - (max(map(len, r.params.stop)) - 1))
        text = self.text[self.emitted_text : upto]
        self.emitted_text = upto
        known = r.known_output_ids
        new_ids = known[self.emitted_tokens :]
        wants = r.params.logprobs is not None
        lp = self.logprobs[self.emitted_tokens :] if wants else None
        tlp = self.token_logprobs[self.emitted_tokens :] if wants else None
        self.emitted_tokens = len(known)
        return StreamDelta(
            r.request_id, text, list(new_ids), finished, r.finish_reason, lp, tlp, r.error
        )

    def output(self) -> RequestOutput:
        """The request's output so far (whole, not a delta)."""
        r = self.request
        wants = r.params.logprobs is not None
        completion = CompletionOutput(
            0,
            self.text,
            r.known_output_ids,
            r.finish_reason,
            self.stop_reason,
            list(self.logprobs) if wants else None,
            list(self.token_logprobs) if wants else None,
        )
        return RequestOutput(
            r.request_id,
            list(r.prompt_token_ids),
            [completion],
            r.is_finished,
            r.num_cached_tokens,
            r.error,
        )
