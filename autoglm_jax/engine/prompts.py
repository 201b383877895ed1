"""What a request's prompt may be, and how it becomes token ids and multimodal inputs: token
ids as given, a string tokenized, or a chat request rendered with the chat template, its image
and audio content parts decoded and preprocessed.

    ids, mm = prepare_prompt(model.config, model.tokenizer, {"messages": [...]})
"""

from __future__ import annotations

from typing import Any, Sequence

from autoglm_jax.config import ModelConfig
from autoglm_jax.engine.multimodal import (
    MultimodalInputs,
    check_media,
    load_prompt_media,
    prepare,
    prompt_media,
)

Prompt = str | Sequence[int] | dict


def prepare_prompt(
    config: ModelConfig, tokenizer: Any, prompt: Prompt
) -> tuple[list[int], MultimodalInputs | None]:
    """Token ids of a prompt and its multimodal inputs: ids as given, a string tokenized,
    or a chat request ({"messages": [...], "enable_thinking": ..., "images": [...],
    "audios": [...]}) rendered with the chat template; image and audio content parts
    (`processing.content`: "image" | "image_url" | "audio" | "input_audio" | "audio_url")
    are decoded and preprocessed. Raises ValueError naming what is wrong."""
    items = prompt_media(prompt) if isinstance(prompt, dict) else []
    # the modality check first: a text-only model refuses media without reading them
    check_media(
        config,
        [m for m in items if m.kind == "image"],
        [m for m in items if m.kind == "audio"],
    )
    ids = prompt_token_ids(tokenizer, config.text.vocab_size, prompt)
    return prepare(config, ids, *load_prompt_media(items))


def prompt_token_ids(tokenizer: Any, vocab_size: int, prompt: Prompt) -> list[int]:
    """The prompt's token ids (a chat request's rendered text, media not read)."""
    if isinstance(prompt, dict):
        if tokenizer is None:
            raise ValueError("chat prompts need a model with a tokenizer")
        messages = prompt.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("chat prompt: `messages` must be a non-empty list")
        text = tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=True,
            enable_thinking=prompt.get("enable_thinking"),
            **prompt.get("chat_template_kwargs", {}),
        )
        return tokenizer.encode(text, add_special_tokens=False)
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("string prompts need a model with a tokenizer; pass token ids")
        return tokenizer.encode(prompt, add_special_tokens=False)
    ids = [int(i) for i in prompt]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}")
    return ids
