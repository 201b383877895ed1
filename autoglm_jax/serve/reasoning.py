"""Splitting `<think>...</think>` out of generated text, incrementally, for streams.

GLM-4.1V-Thinking (and AutoGLM) answer `<think>reasoning</think><answer>...</answer>`. With
thinking on, the server sends the text between the tags as `reasoning` / `reasoning_content`
and the rest as `content`, like vLLM's glm45 reasoning parser: text before `<think>` is
content, text after `</think>` is content, and a prompt that already ends in `<think>` starts
inside the reasoning. A tag split across two deltas is held back until it is whole.

Tokenizers that mark the tags as special tokens drop them from decoded text
(`skip_special_tokens`). `TagInjector` puts them back at the exact character position, found
by replaying the token ids through the same incremental detokenizer the engine uses, so the
split does not depend on how the checkpoint flags its tags.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

THINK_START = "<think>"
THINK_END = "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningParser:
    """Text in, (reasoning, content) increments out."""

    def __init__(
        self,
        in_reasoning: bool = False,
        start: str = THINK_START,
        end: str = THINK_END,
        drop_stray_tags: bool = False,
    ):
        """drop_stray_tags: a tag that does not switch state (`</think>` before any
        `<think>`, either tag after the answer began) is removed instead of passed on as
        text; for tags that are special tokens under skip_special_tokens, which the client
        asked not to see."""
        self.start, self.end = start, end
        self.state = "reasoning" if in_reasoning else "before"
        self.drop_stray_tags = drop_stray_tags
        self._held = ""

    def _tags(self) -> tuple[str | None, list[str]]:
        """(the tag that switches state here, stray tags to drop here)."""
        if self.state == "before":
            return self.start, [self.end]
        if self.state == "reasoning":
            return self.end, [self.start]
        return None, [self.start, self.end]

    def feed(self, text: str) -> tuple[str, str]:
        buf = self._held + text
        reasoning, content = [], []
        while buf:
            out = reasoning if self.state == "reasoning" else content
            switch, stray = self._tags()
            looked = ([switch] if switch else []) + (stray if self.drop_stray_tags else [])
            found = [(buf.find(t), t) for t in looked if buf.find(t) >= 0]
            if found:
                idx, tag = min(found)
                out.append(buf[:idx])
                buf = buf[idx + len(tag) :]
                if tag == switch:
                    self.state = "reasoning" if self.state == "before" else "after"
                continue
            keep = max((_partial_suffix(buf, t) for t in looked), default=0)
            out.append(buf[: len(buf) - keep])
            buf = buf[len(buf) - keep :]
            break
        self._held = buf
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        """Flush text held back as a possible partial tag."""
        held, self._held = self._held, ""
        return (held, "") if self.state == "reasoning" else ("", held)

    def split(self, text: str) -> tuple[str, str]:
        """The whole text at once (non-streamed responses)."""
        r1, c1 = self.feed(text)
        r2, c2 = self.finish()
        return r1 + r2, c1 + c2


class TagInjector:
    """Re-inserts tags that the detokenizer skipped, at their character positions.

    Feed it each delta's token ids and text, in order; it returns the text with the tags.
    """

    def __init__(
        self,
        tokenizer: Any,
        tags: dict[int, str],
        prompt_ids: Sequence[int] | None,
        skip_special_tokens: bool,
    ):
        from autoglm_jax.processing.detokenizer import IncrementalDetokenizer

        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
        self._tags = tags
        self._chars = 0  # characters the ids pushed so far decode to (as the engine's text)
        self._emitted = 0  # characters of engine text received
        self._pending: collections.deque[tuple[int, str]] = collections.deque()

    def feed(self, token_ids: Sequence[int], text: str) -> str:
        for t in token_ids:
            piece = self._detok.push(t)
            if t in self._tags:
                self._pending.append((self._chars + len(piece), self._tags[t]))
            self._chars += len(piece)
        out, rest, pos = [], text, self._emitted
        end = self._emitted + len(text)
        while self._pending and self._pending[0][0] <= end:
            at, tag = self._pending.popleft()
            cut = max(0, at - pos)
            out.append(rest[:cut])
            out.append(tag)
            rest, pos = rest[cut:], pos + cut
        out.append(rest)
        self._emitted = end
        return "".join(out)


class ReasoningStream:
    """One choice's text pipeline: optional tag injection, then the parser."""

    def __init__(self, parser: ReasoningParser, injector: TagInjector | None = None):
        self.parser = parser
        self.injector = injector

    def feed(self, text: str, token_ids: Sequence[int] = ()) -> tuple[str, str]:
        if self.injector is not None:
            text = self.injector.feed(token_ids, text)
        return self.parser.feed(text)

    def finish(self) -> tuple[str, str]:
        return self.parser.finish()

    def split(self, text: str, token_ids: Sequence[int]) -> tuple[str, str]:
        r1, c1 = self.feed(text, token_ids)
        r2, c2 = self.finish()
        return r1 + r2, c1 + c2


def reasoning_stream(
    tokenizer: Any, prompt_text: str, prompt_ids: Sequence[int] | None, skip_special_tokens: bool
) -> ReasoningStream:
    """The pipeline for one choice of a chat request with thinking on."""
    in_reasoning = prompt_text.rstrip().endswith(THINK_START)
    injector = None
    if skip_special_tokens:
        special = getattr(tokenizer, "special_token_id_set", frozenset())
        tags = {}
        for tag in (THINK_START, THINK_END):
            tid = tokenizer.token_to_id(tag)
            if tid is not None and tid in special:
                tags[tid] = tag
        if tags:
            injector = TagInjector(tokenizer, tags, prompt_ids, skip_special_tokens)
    # Injected tags exist only to split the text: one that splits nothing must not show.
    parser = ReasoningParser(in_reasoning=in_reasoning, drop_stray_tags=injector is not None)
    return ReasoningStream(parser, injector)
