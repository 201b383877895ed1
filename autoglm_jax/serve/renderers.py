"""The endpoint-specific parts of a response: what a choice says in chat and in completions.

The loops that feed these are in streaming.py. Each renderer holds one request's per-choice
state (the reasoning split, completions' logprobs text offsets) and builds a choice both ways,
streamed and whole, through the same helpers, so the two always agree.
"""

from __future__ import annotations

from typing import Callable, Sequence

from autoglm_jax.engine.outputs import CompletionOutput, StreamDelta
from autoglm_jax.serve import protocol as proto
from autoglm_jax.serve.logprobs import TokenText
from autoglm_jax.serve.reasoning import ReasoningStream
from autoglm_jax.serve.streaming import ChoicePart, Renderer


class ChatRenderer(Renderer):
    """Chat: `delta`s (role first, then content and reasoning) streamed, a `message` whole."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(
        self,
        model: str,
        n: int,
        include_usage: bool,
        tokens: TokenText,
        *,
        splitter: Callable[[], ReasoningStream | None],
        return_reasoning: bool,
        logprobs: bool,
    ):
        """splitter: a fresh reasoning split for one choice, None when thinking is off."""
        super().__init__(model, n, include_usage)
        self.tokens = tokens
        self.splitter = splitter
        self.return_reasoning = return_reasoning
        self.logprobs = logprobs
        self._splits: dict[int, ReasoningStream | None] = {}

    def _divide(
        self, split: ReasoningStream | None, text: str, token_ids: Sequence[int], final: bool
    ) -> tuple[str, str]:
        """(reasoning, content) of new text; reasoning is "" when the client did not ask."""
        if split is None:
            return "", text
        reasoning, content = split.feed(text, token_ids)
        if final:  # text held back as a possible partial tag goes out now
            r2, c2 = split.finish()
            reasoning, content = reasoning + r2, content + c2
        return (reasoning if self.return_reasoning else ""), content

    def opening(self, index: int) -> ChoicePart:
        return ChoicePart({"delta": proto.chat_delta(role=True, content="")})

    def piece(self, index: int, delta: StreamDelta, final: bool) -> ChoicePart | None:
        if index not in self._splits:
            self._splits[index] = self.splitter()
        reasoning, content = self._divide(self._splits[index], delta.text, delta.token_ids, final)
        logprobs = None
        if self.logprobs and delta.token_ids:
            logprobs = self.tokens.chat(delta.token_ids, delta.token_logprobs, delta.logprobs)
        d = proto.chat_delta(content=content or None, reasoning=reasoning or None)
        if not d and not final:
            if logprobs is None:
                return None
            d = {"content": ""}  # only logprobs: an empty content, not an empty delta
        return ChoicePart({"delta": d}, logprobs)

    def whole(self, index: int, completion: CompletionOutput) -> ChoicePart:
        reasoning, content = self._divide(
            self.splitter(), completion.text, completion.token_ids, final=True
        )
        logprobs = None
        if self.logprobs:
            logprobs = self.tokens.chat(
                completion.token_ids, completion.token_logprobs, completion.logprobs
            )
        return ChoicePart({"message": proto.chat_message(content, reasoning or None)}, logprobs)


class CompletionRenderer(Renderer):
    """Completions: `text` both ways; with echo, the prompt first (its own chunk, streamed)."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl"

    def __init__(
        self,
        model: str,
        n: int,
        include_usage: bool,
        tokens: TokenText,
        *,
        echoes: Sequence[str] | None,
        logprobs: bool,
    ):
        """echoes: each prompt's text, when the client asked for it back."""
        super().__init__(model, n, include_usage)
        self.tokens = tokens
        self.echoes = echoes
        self.logprobs = logprobs
        self._offsets: dict[int, int] = {}  # characters of each choice's text so far

    def _echo(self, index: int) -> str:
        return "" if self.echoes is None else self.echoes[index // self.n]

    def opening(self, index: int) -> ChoicePart | None:
        return None if self.echoes is None else ChoicePart({"text": self._echo(index)})

    def piece(self, index: int, delta: StreamDelta, final: bool) -> ChoicePart | None:
        logprobs = None
        if self.logprobs and delta.token_ids:
            logprobs, self._offsets[index] = self.tokens.completion(
                delta.token_ids, delta.token_logprobs, delta.logprobs, self._offsets.get(index, 0)
            )
        if not final and not delta.text and logprobs is None:
            return None
        return ChoicePart({"text": delta.text}, logprobs)

    def whole(self, index: int, completion: CompletionOutput) -> ChoicePart:
        logprobs = None
        if self.logprobs:
            logprobs, _ = self.tokens.completion(
                completion.token_ids, completion.token_logprobs, completion.logprobs, 0
            )
        return ChoicePart({"text": self._echo(index) + completion.text}, logprobs)
