"""Records to token ids: chat turns rendered with the tokenizer's template (loss on the
assistant turns), plain text, and the shift that turns an example into inputs and targets."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from autoglm_jax.training.records import DataError

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")


def tokenize_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], where: str = "chat"
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids i32[L], loss_mask i32[L]) of a conversation rendered by the chat template.

    The mask is 1 on each assistant turn's text and on the token that ends it when that token
    is a stop token (the next <|user|> / <|observation|>, or <|endoftext|>, which is appended
    after a final assistant turn). Fast path: the turns are delimited by the GLM role tokens in
    the ids. When the role tokens do not line up with the messages (another template), the
    spans are found by rendering each prefix of the conversation instead.
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    eos = tokenizer.eos_token_id
    if messages[-1]["role"] == "assistant" and eos is not None:
        text += tokenizer.id_to_token(eos)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, np.int32)
    stops = np.asarray(
        sorted(set(tokenizer.stop_token_ids) | ({eos} if eos is not None else set()))
    )
    role_ids = [tokenizer.token_to_id(t) for t in ROLE_TOKENS]
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    if None not in role_ids and np.count_nonzero(ids == role_ids[2]) == n_assistant:
        bounds = np.nonzero(np.isin(ids, role_ids + ([eos] if eos is not None else [])))[0]
        spans = []
        for p in np.nonzero(ids == role_ids[2])[0]:
            later = bounds[bounds > p]
            spans.append((p + 1, int(later[0]) if later.size else len(ids)))
    else:
        spans = _spans_by_prefix(tokenizer, messages, text, enc, where)
    mask = np.zeros(len(ids), np.int32)
    for s, e in spans:
        mask[s:e] = 1
        if e < len(ids) and ids[e] in stops:
            mask[e] = 1
    return ids, mask


def _spans_by_prefix(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], text: str, enc: Any, where: str
) -> list[tuple[int, int]]:
    """Token ranges [start, end) of the assistant turns' content, found by rendering every
    prefix of the conversation (works for any template that renders prefixes as prefixes)."""
    render = lambda ms: tokenizer.apply_chat_template(ms, add_generation_prompt=False)  # noqa: E731
    starts = np.asarray([s for s, _ in enc.offsets], np.int64)
    spans, prev = [], ""
    for i, m in enumerate(messages):
        cur = render(messages[: i + 1])
        if not text.startswith(cur) or not cur.startswith(prev):
            raise DataError(
                f"{where}: the chat template does not render prefixes of the "
                "conversation as prefixes; cannot locate assistant turns"
            )
        if m["role"] == "assistant":
            tag = cur.find(ROLE_TOKENS[2], len(prev))
            start = tag + len(ROLE_TOKENS[2]) if tag >= 0 else len(prev)
            spans.append(
                (int(np.searchsorted(starts, start)), int(np.searchsorted(starts, len(cur))))
            )
        prev = cur
    return spans


def tokenize_text(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids = tokenizer.encode(text)
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    ids = np.asarray(ids, np.int32)
    return ids, np.ones(len(ids), np.int32)


def shift(
    ids: np.ndarray, mask: np.ndarray, seq_len: int, positions: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Next-token features of one example, truncated to seq_len (positions [..., L] of the
    inputs, when given)."""
    ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
    out = {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:].astype(np.int32)}
    if positions is not None:
        out["positions"] = np.asarray(positions, np.int32)[..., : len(ids) - 1]
    return out


def shift_media(
    feats: Mapping[str, np.ndarray], seq_len: int, where: str, image_token_id: int | None
) -> dict[str, np.ndarray]:
    """`shift` of a media processor's output, with its media arrays. Truncation must keep
    every image token (the image embeddings are spliced in order across the batch)."""
    ids = np.asarray(feats["input_ids"], np.int32)
    out = shift(ids, np.asarray(feats["loss_mask"], np.int32), seq_len, feats.get("positions"))
    if "image_grid_thw" in feats and image_token_id is not None:
        kept = int(np.count_nonzero(out["inputs"] == image_token_id))
        total = int(np.count_nonzero(ids == image_token_id))
        if kept != total:
            raise DataError(
                f"{where}: the example is {len(ids)} tokens and data.seq_len "
                f"{seq_len} would cut {total - kept} of its {total} image tokens; "
                "raise data.seq_len"
            )
    for k in ("pixel_values", "image_grid_thw", "audio_features", "audio_frames"):
        if k in feats:
            out[k] = feats[k]
    return out
