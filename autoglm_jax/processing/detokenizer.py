"""Incremental detokenization for streaming: one token in, the new text out.

    detok = IncrementalDetokenizer(tok)
    for token_id in stream:
        send(detok.push(token_id))
    send(detok.finish())
    # "".join(all deltas) == tok.decode(all generated ids)

Byte-level tokenizers (GLM-4's) take the exact path: each id's bytes (`Tokenizer.token_bytes`,
cached per tokenizer) go through an incremental UTF-8 decoder, which holds back the bytes of an
unfinished character and turns invalid sequences into U+FFFD exactly as the full decode does.
Constant work per token; `decode` is never called.

Other decoders (SentencePiece-style Metaspace, WordPiece, ...) take vLLM's path: decode a short
window of trailing tokens and emit the text past the part already emitted, holding back while
the window ends in U+FFFD (`prefix_offset`/`read_offset` as in vllm/transformers_utils/
detokenizer_utils.py). Its deltas add up to the full decode for valid text; like vLLM's, it can
differ on invalid byte runs under a ByteFallback decoder, which replaces the whole run, bytes
already emitted included, so no streaming detokenizer could match it.
"""

from __future__ import annotations

import codecs
import operator
from collections.abc import Iterable, Sequence

from autoglm_jax.processing.tokenizer import Tokenizer

# How many prompt tokens the window path keeps as context for the first generated tokens.
_PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas.

    Args:
      tokenizer: the `Tokenizer` that produced the ids.
      prompt_ids: the prompt. Used only by the window path, as left context for the first
        generated tokens (so a SentencePiece leading space survives); byte-level output does
        not depend on it.
      skip_special_tokens: drop special tokens from the text, as `decode` does.

    Deltas never end in a partial character. On the byte-level path the concatenated deltas
    after `finish()` equal `tokenizer.decode(all pushed ids)` for any ids, and every prefix of
    them is a prefix of that decode (a U+FFFD appears only where the full decode has one).
    The window path gives the same for valid text (see the module docstring).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = False,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.byte_level = tokenizer.decoder_is_byte_level
        self.num_tokens = 0
        self._finished = False
        if self.byte_level:
            self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self._skip = tokenizer.special_token_id_set if skip_special_tokens else frozenset()
        else:
            prompt = [] if prompt_ids is None else [operator.index(i) for i in prompt_ids]
            context = prompt[-_PROMPT_CONTEXT_TOKENS:]
            self._ids: list[int] = context
            # Text of ids[prefix_offset:read_offset] has been emitted (it is context).
            self._prefix_offset = 0
            self._read_offset = len(context)

    def push(self, token_ids: int | Iterable[int]) -> str:
        """Adds one id or several; returns the text that became final."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        try:  # one id: int, numpy or jax integer scalar
            ids = [operator.index(token_ids)]
        except TypeError:
            ids = [operator.index(i) for i in token_ids]
        self.num_tokens += len(ids)
        if self.byte_level:
            skip, token_bytes = self._skip, self.tokenizer.token_bytes
            data = b"".join(token_bytes(i) for i in ids if i not in skip)
            return self._utf8.decode(data, final=False) if data else ""
        return "".join(self._push_window(i) for i in ids)

    def finish(self) -> str:
        """Ends the stream; returns any held-back remainder (U+FFFD for an unfinished char)."""
        if self._finished:
            return ""
        self._finished = True
        if self.byte_level:
            return self._utf8.decode(b"", final=True)
        decode = self._decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset])
        full = decode(self._ids[self._prefix_offset :])
        return full[len(prefix_text) :] if len(full) > len(prefix_text) else ""

    flush = finish

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _push_window(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            # The next window starts at the last emitted token; older ids are not needed.
            del self._ids[: self._read_offset]
            self._prefix_offset = 0
            self._read_offset = len(self._ids)
            return delta
        return ""
