"""Chat content parts in the server: the server's policy over the one content parser
(`processing/content.py`).

Images come as `data:image/...;base64,` URLs, or as local paths / file:// URLs under
`--allowed-local-media-path`; audio as `input_audio` (base64 WAV) or a `data:audio/wav` URL in
`audio_url`. Nothing is ever fetched over the network: http(s) URLs are a 400. Every problem is
an `APIError` 400 naming the part (`messages[0].content[1]`).

The checked media travel to the engine inside the chat prompt's messages, decoded, as the
parser renders them: `{"type": "image", "image": u8[H, W, 3]}` and
`{"type": "audio", "audio": Waveform}`, where the chat template puts their placeholders.
"""

from __future__ import annotations

from typing import Any, Sequence

from autoglm_jax.processing.content import Content, ContentError, ContentRules, parse_messages
from autoglm_jax.serve.protocol import APIError, ChatMessage, bad_request

MAX_IMAGE_PIXELS = 40_000_000  # the GLM-4.1V processor resizes to ~6M pixels anyway
MAX_AUDIO_SECONDS = 120.0  # AudioConfig.max_audio_seconds' default
PART_TYPES = ("text", "image_url", "input_audio", "audio_url")  # OpenAI's names only

_MESSAGE_FIELDS = ("name", "reasoning_content", "reasoning", "tool_calls", "tool_call_id")


def has_media_parts(messages: Sequence[ChatMessage]) -> bool:
    return any(isinstance(m.content, list) for m in messages)


def content_rules(allowed_local_media_path: str | None) -> ContentRules:
    """The server's policy: OpenAI part names, local files only under the allowed folder,
    size limits."""
    return ContentRules(
        part_types=PART_TYPES,
        files=allowed_local_media_path is not None,
        media_root=allowed_local_media_path,
        media_root_name="--allowed-local-media-path",
        max_image_pixels=MAX_IMAGE_PIXELS,
        max_audio_seconds=MAX_AUDIO_SECONDS,
    )


def render_messages(
    messages: Sequence[ChatMessage], allowed_local_media_path: str | None
) -> tuple[list[dict[str, Any]], Content]:
    """Messages as the chat template wants them, plus the parsed content (decoded media in
    prompt order: `.images`, `.audios`)."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        msg["content"] = m.content
        for f in _MESSAGE_FIELDS:
            v = getattr(m, f)
            if v is not None:
                msg[f] = v
        out.append(msg)
    try:
        content = parse_messages(out, content_rules(allowed_local_media_path))
    except ContentError as e:
        raise bad_request(str(e), e.field) from None
    return content.messages, content


def check_modalities(media: Content, accepted: frozenset[str], model_name: str) -> None:
    for kind in ("image", "audio"):
        if kind in media.kinds and kind not in accepted:
            raise APIError(400, f"model `{model_name}` does not accept {kind} input", "messages")


def engine_modalities(engine: Any) -> frozenset[str]:
    """What the engine consumes: text, plus image with a vision tower and audio with an audio
    encoder (the engine's own check_media rule)."""
    config = engine.model.config
    kinds = {"text"}
    if getattr(config, "vision", None) is not None:
        kinds.add("image")
    if getattr(config, "audio", None) is not None:
        kinds.add("audio")
    return frozenset(kinds)
