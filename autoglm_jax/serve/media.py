"""Chat content parts: text, images and audio, checked and decoded in the server.

Images come as `data:image/...;base64,` URLs, or as local paths / file:// URLs under
`--allowed-local-media-path`; audio as `input_audio` (base64 WAV) or a `data:audio/wav` URL in
`audio_url`. Nothing is ever fetched over the network: http(s) URLs are a 400. Every problem is
an `APIError` 400 naming the part (`messages[0].content[1]`).

The checked media travel to the engine inside the chat prompt's messages, as the engine's
parts (autoglm_jax/engine/multimodal.py): `{"type": "image", "image": u8[H, W, 3]}` and
`{"type": "audio", "audio": <WAV bytes>}`, where the chat template puts their placeholders.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import re
import urllib.parse
from typing import Any, Sequence

import numpy as np

from autoglm_jax.serve.protocol import APIError, ChatMessage, bad_request

MAX_IMAGE_PIXELS = 40_000_000  # the GLM-4.1V processor resizes to ~6M pixels anyway
MAX_AUDIO_SECONDS = 120.0  # AudioConfig.max_audio_seconds' default


@dataclasses.dataclass
class Media:
    images: list[np.ndarray] = dataclasses.field(default_factory=list)  # u8[H, W, 3] each
    audios: list[bytes] = dataclasses.field(default_factory=list)  # checked WAV files

    def __bool__(self) -> bool:
        return bool(self.images or self.audios)


_MESSAGE_FIELDS = ("name", "reasoning_content", "reasoning", "tool_calls", "tool_call_id")


def has_media_parts(messages: Sequence[ChatMessage]) -> bool:
    return any(isinstance(m.content, list) for m in messages)


def render_messages(
    messages: Sequence[ChatMessage], allowed_local_media_path: str | None
) -> tuple[list[dict[str, Any]], Media]:
    """Messages as the chat template wants them, plus the decoded media in prompt order."""
    media = Media()
    out = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role}
        if isinstance(m.content, list):
            msg["content"] = [
                _part(p, f"messages[{i}].content[{j}]", media, allowed_local_media_path)
                for j, p in enumerate(m.content)
            ]
        else:
            msg["content"] = m.content
        for f in _MESSAGE_FIELDS:
            v = getattr(m, f)
            if v is not None:
                msg[f] = v
        out.append(msg)
    return out, media


def _part(part: Any, where: str, media: Media, allowed: str | None) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise bad_request(
            f"{where}: a content part must be an object with a `type`, got {type(part).__name__}",
            where,
        )
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request(f"{where}.text: a text part needs a string `text`", f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str) or not url:
            raise bad_request(
                f'{where}.image_url.url: an image_url part needs `image_url: {{"url": ...}}`',
                f"{where}.image_url.url",
            )
        image = load_image_url(url, f"{where}.image_url.url", allowed)
        media.images.append(image)
        return {"type": "image", "image": image}
    if kind == "input_audio":
        spec = part.get("input_audio")
        if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
            raise bad_request(
                f'{where}.input_audio: needs `input_audio: {{"data": <base64>, "format": "wav"}}`',
                f"{where}.input_audio",
            )
        fmt = spec.get("format", "wav")
        wav = check_audio(spec["data"], fmt, f"{where}.input_audio")
        media.audios.append(wav)
        return {"type": "audio", "audio": wav}
    if kind == "audio_url":
        spec = part.get("audio_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str) or not url.startswith("data:"):
            raise bad_request(
                f"{where}.audio_url.url: only data: URLs are accepted "
                "(data:audio/wav;base64,...); nothing is fetched",
                f"{where}.audio_url.url",
            )
        mime, payload = _split_data_url(url, f"{where}.audio_url.url")
        if mime not in ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"):
            raise bad_request(
                f"{where}.audio_url.url: unsupported audio type {mime!r}; send "
                "WAV (data:audio/wav;base64,...)",
                f"{where}.audio_url.url",
            )
        wav = check_audio(payload, "wav", f"{where}.audio_url.url")
        media.audios.append(wav)
        return {"type": "audio", "audio": wav}
    if kind in ("video_url", "video", "input_video"):
        raise bad_request(f"{where}: video input is not supported", f"{where}.type")
    raise bad_request(
        f"{where}.type: unsupported content part type {kind!r} (supported: text, "
        "image_url, input_audio, audio_url)",
        f"{where}.type",
    )


def _split_data_url(url: str, where: str) -> tuple[str, str]:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:"):
        raise bad_request(
            f"{where}: malformed data URL (expected data:<type>;base64,<data>)", where
        )
    fields = header[len("data:") :].split(";")
    if "base64" not in fields[1:]:
        raise bad_request(f"{where}: only base64 data URLs are supported", where)
    return fields[0].strip().lower(), payload


def _b64(payload: str, where: str) -> bytes:
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"{where}: invalid base64 data ({e})", where) from None
    if not data:
        raise bad_request(f"{where}: empty data", where)
    return data


def load_image_url(url: str, where: str, allowed: str | None) -> np.ndarray:
    """An image part's URL -> u8[H, W, 3]. data: URLs always; local paths only under `allowed`;
    never the network."""
    from autoglm_jax.processing.image import ImageError, load_image

    lower = url[:16].lower()
    if lower.startswith("data:"):
        mime, payload = _split_data_url(url, where)
        if not mime.startswith("image/"):
            raise bad_request(
                f"{where}: not an image data URL (media type {mime or 'missing'!r})", where
            )
        data = _b64(payload, where)
        _check_pixels(data, where)
        try:
            return load_image(data)
        except ImageError as e:
            raise bad_request(f"{where}: {_strip_what(str(e))}", where) from None
    if lower.startswith(("http://", "https://")):
        raise bad_request(
            f"{where}: this server does not fetch URLs; send the image inline as "
            "a data: URL (data:image/png;base64,...)",
            where,
        )
    if lower.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(
                f"{where}: file URLs must name a local file (file:///path), not a host", where
            )
        path = urllib.parse.unquote(parsed.path)
    elif "://" in url[:12]:
        raise bad_request(f"{where}: unsupported URL scheme {url.split('://')[0]!r}", where)
    else:
        path = url
    return _load_local(path, where, allowed)


def _load_local(path: str, where: str, allowed: str | None) -> np.ndarray:
    from autoglm_jax.processing.image import ImageError, load_image

    if allowed is None:
        raise bad_request(
            f"{where}: local image paths are disabled; start the server with "
            "--allowed-local-media-path DIR to allow files under DIR",
            where,
        )
    root = os.path.realpath(allowed)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise bad_request(f"{where}: {path!r} is outside --allowed-local-media-path", where)
    if not os.path.isfile(real):
        raise bad_request(f"{where}: no such image file {path!r}", where)
    with open(real, "rb") as f:
        _check_pixels(f.read(), where)
    try:
        return load_image(real)
    except (ImageError, OSError) as e:
        raise bad_request(f"{where}: {_strip_what(str(e))}", where) from None


def _check_pixels(data: bytes, where: str) -> None:
    """Refuse images too large to decode safely, from the header alone (a small PNG can
    declare gigapixels)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - load_image reports undecodable data precisely
        return
    if w * h > MAX_IMAGE_PIXELS:
        raise bad_request(
            f"{where}: image is {w}x{h} pixels, more than the "
            f"{MAX_IMAGE_PIXELS} this server decodes",
            where,
        )


def check_audio(data_b64: str, fmt: Any, where: str) -> bytes:
    """Base64 audio -> the WAV file's bytes, once it decodes and is not too long."""
    from autoglm_jax.processing.audio import AudioError, read_wav

    if fmt == "mp3":
        raise bad_request(
            f"{where}.format: mp3 audio is not supported by this server (no MP3 decoder); send WAV",
            f"{where}.format",
        )
    if fmt != "wav":
        raise bad_request(
            f"{where}.format: unsupported audio format {fmt!r} (supported: wav)", f"{where}.format"
        )
    raw = _b64(data_b64, where)
    try:
        waveform, rate = read_wav(raw)
    except AudioError as e:
        raise bad_request(f"{where}: {_strip_what(str(e))}", where) from None
    seconds = waveform.shape[0] / rate
    if seconds > MAX_AUDIO_SECONDS:
        raise bad_request(
            f"{where}: audio is {seconds:.1f} s long, more than the "
            f"{MAX_AUDIO_SECONDS:g} s this server accepts",
            where,
        )
    return raw


_DECODER_PREFIX = re.compile(r"^(image \d+ \(<\d+ bytes>\)|image \d+ \('[^']*'\)|<bytes>): ")


def _strip_what(message: str) -> str:
    """Drop the decoder's own "image 0 (<123 bytes>): " / "<bytes>: " prefix (our message
    names the part instead)."""
    return _DECODER_PREFIX.sub("", message, count=1)


def check_modalities(media: Media, accepted: frozenset[str], model_name: str) -> None:
    for kind, items in (("image", media.images), ("audio", media.audios)):
        if items and kind not in accepted:
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
