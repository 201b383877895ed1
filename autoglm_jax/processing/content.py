"""Chat content parts -> text and media: the one parser of OpenAI-style message content, used
by the engine, the server and the trainer alike.

    content = parse_messages(messages, rules)             # sources resolved and decoded
    content.images, content.audios                        # u8[H, W, 3] each, Waveform each
    content.messages                                      # for the chat template
    content = parse_messages(messages, rules, load=False) # structure and sources only

Parts: `{"type": "text", "text": ...}`; images as `image_url` (`{"url": ...}`) or `image`
(`image` / `path` / `url`); audio as `input_audio` (`{"data": <base64>, "format": "wav"}`),
`audio_url` (a `data:audio/wav` URL only) or `audio` (`audio` / `path`). A source is a
`data:` URL, a local path or `file://` URL, or (in process) an already loaded object: a
numpy or PIL image, WAV bytes, a `Waveform`. Nothing is ever fetched over the network.

What differs between callers is policy, a `ContentRules`: which part types, whether local
files are allowed and under which folder, size limits, and whether malformed structure is an
error or left to the chat template. Every problem is a `ContentError` naming the field
(`messages[0].content[1].image_url.url`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from autoglm_jax.processing.audio import AudioError, Waveform, read_wav
from autoglm_jax.processing.image import ImageError, load_image

MEDIA_KINDS = {
    "image": "image",
    "image_url": "image",
    "audio": "audio",
    "input_audio": "audio",
    "audio_url": "audio",
}
PART_TYPES = ("text", *MEDIA_KINDS)
VIDEO_TYPES = ("video", "video_url", "input_video")
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
_INLINE_EXAMPLE = {"image": "data:image/png;base64,...", "audio": "data:audio/wav;base64,..."}
_NEEDS = {
    "image_url": 'an image_url part needs `image_url: {"url": ...}`',
    "audio_url": 'an audio_url part needs `audio_url: {"url": "data:audio/wav;base64,..."}`',
    "image": "an image part needs `image` (or `path`): a file path or a data: URL",
    "audio": "an audio part needs `audio` (or `path`): a file path or a data: URL",
    "input_audio": 'needs `input_audio: {"data": <base64>, "format": "wav"}`',
}


class ContentError(ValueError):
    """A content part that cannot be used; `field` is where it sits in the request."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclasses.dataclass(frozen=True)
class ContentRules:
    """A caller's policy; the grammar is the same for every caller."""

    part_types: tuple[str, ...] = PART_TYPES  # accepted `type`s (video never is)
    strict: bool = True  # malformed messages/parts are errors (else left to the template)
    refuse_unknown: bool = True  # a part of another type is an error (else it is ignored)
    objects: bool = False  # in-process values (arrays, PIL images, bytes) are accepted
    files: bool = True  # local paths and file:// URLs are accepted
    base_dir: str | None = None  # relative paths are relative to it (None: as given)
    media_root: str | None = None  # local files only under this folder
    media_root_name: str = "the media root"  # how errors name the folder (the server: its flag)
    max_image_pixels: int | None = None  # refused from the header, before decoding
    max_audio_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class TextSegment:
    message: int  # index into messages
    part: int  # index into its content, -1 for string content
    text: str


@dataclasses.dataclass(frozen=True)
class MediaItem:
    """One image or audio clip: where it came from and its source, once resolved."""

    kind: str  # "image" or "audio"
    part_type: str  # the part's `type` as sent ("image_url", "input_audio", ...)
    field: str  # its source's place, e.g. "messages[0].content[1].image_url.url"
    path: str | None = None  # a local file (absolute under a base_dir)
    data: bytes | None = None  # inline bytes (a data: URL's or input_audio's base64, decoded)
    value: Any = None  # an in-process object (array, PIL image, bytes, Waveform)
    loaded: Any = None  # u8[H, W, 3] for an image, a Waveform for audio, once loaded

    @property
    def source(self) -> Any:
        """What a loader reads: the path, the inline bytes or the object."""
        if self.path is not None:
            return self.path
        return self.data if self.data is not None else self.value

    @property
    def resolved(self) -> Any:
        """The loaded value, or the source while not loaded."""
        return self.loaded if self.loaded is not None else self.source


@dataclasses.dataclass(frozen=True)
class Content:
    messages: list[dict[str, Any]]  # media parts as {"type": kind, kind: loaded or source}
    texts: tuple[TextSegment, ...]
    media: tuple[MediaItem, ...]  # in order of appearance

    @property
    def images(self) -> list[Any]:
        return [m.resolved for m in self.media if m.kind == "image"]

    @property
    def audios(self) -> list[Any]:
        return [m.resolved for m in self.media if m.kind == "audio"]

    @property
    def kinds(self) -> set[str]:
        return {m.kind for m in self.media}


# --- parsing ----------------------------------------------------------------------------------


def parse_messages(messages: Any, rules: ContentRules, *, load: bool = True) -> Content:
    """Every message's content parts, checked and (load=True) decoded. Messages other than
    dicts with list content pass through unchanged (strict rules refuse content that is
    neither a string, a list nor None)."""
    out, texts, media = [], [], []
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            texts.append(TextSegment(i, -1, content))
        if not isinstance(content, list):
            if rules.strict and content is not None and not isinstance(content, str):
                raise ContentError(
                    f"messages[{i}].content", "must be a string or a list of content parts"
                )
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            got = parse_part(part, f"messages[{i}].content[{j}]", rules)
            if isinstance(got, TextSegment):
                got = dataclasses.replace(got, message=i, part=j)
                texts.append(got)
                part = {"type": "text", "text": got.text}
            elif isinstance(got, MediaItem):
                got = load_media(got, rules) if load else got
                media.append(got)
                part = {"type": got.kind, got.kind: got.resolved}
            parts.append(part)
        out.append({**message, "content": parts})
    return Content(out, tuple(texts), tuple(media))


def parse_part(part: Any, where: str, rules: ContentRules) -> TextSegment | MediaItem | None:
    """One content part: a TextSegment, a MediaItem (not loaded), or None for a part the
    rules leave to the chat template."""
    if not isinstance(part, Mapping):
        if not rules.strict:
            return None
        raise ContentError(
            where, f"a content part must be an object with a `type`, got {type(part).__name__}"
        )
    kind = part.get("type")
    if not isinstance(kind, str) and rules.strict:
        raise ContentError(f"{where}.type", "a content part needs a string `type`")
    if kind in VIDEO_TYPES:  # the template would write a video placeholder with no frames
        raise ContentError(f"{where}.type", "video input is not supported")
    if kind not in rules.part_types:
        if not rules.refuse_unknown:
            return None
        raise ContentError(
            f"{where}.type",
            f"unsupported content part type {kind!r} (supported: {', '.join(rules.part_types)})",
        )
    if kind == "text":
        text = part.get("text")
        if isinstance(text, str):
            return TextSegment(-1, -1, text)
        if not rules.strict:
            return None
        raise ContentError(f"{where}.text", "a text part needs a string `text`")
    if kind == "input_audio":
        return _input_audio(part, where, rules)
    return _media_part(part, kind, where, rules)


def media_item(kind: str, source: Any, field: str, rules: ContentRules) -> MediaItem:
    """A MediaItem of a bare source (a prompt's own list of images or audio clips)."""
    if isinstance(source, str):
        return _reference(source, kind, kind, field, rules)
    if source is None or not rules.objects:
        raise ContentError(
            field, f"expected a file path or a data: URL, got {type(source).__name__}"
        )
    return MediaItem(kind, kind, field, value=source)


def _media_part(part: Mapping[str, Any], t: str, where: str, rules: ContentRules) -> MediaItem:
    kind = MEDIA_KINDS[t]
    key = next((k for k in (t, "path", "url") if part.get(k) is not None), t)
    value = part.get(key)
    if isinstance(value, Mapping):  # {"url": ...} as OpenAI nests it, or {"path": ...}
        value = value.get("url", value.get("path"))
    field = f"{where}.{t}.url" if t in ("image_url", "audio_url") else f"{where}.{key}"
    if isinstance(value, str) and value:
        if t == "audio_url" and not value.startswith("data:"):
            raise ContentError(
                field,
                "only data: URLs are accepted (data:audio/wav;base64,...); nothing is fetched",
            )
        return _reference(value, kind, t, field, rules)
    if value is not None and not isinstance(value, str) and rules.objects:
        return MediaItem(kind, t, field, value=value)
    raise ContentError(field, _NEEDS[t])


def _input_audio(part: Mapping[str, Any], where: str, rules: ContentRules) -> MediaItem:
    field = f"{where}.input_audio"
    spec = part.get("input_audio")
    if isinstance(spec, Mapping) and spec.get("data") is None and isinstance(spec.get("path"), str):
        # {"path": ...}: a file, which training data may name
        return _reference(spec["path"], "audio", "input_audio", f"{field}.path", rules)
    data, fmt = (spec, "wav") if isinstance(spec, str) else (None, "wav")
    if isinstance(spec, Mapping):
        data, fmt = spec.get("data"), spec.get("format", "wav")
    if fmt == "mp3":
        raise ContentError(
            f"{field}.format", "mp3 audio is not supported (no MP3 decoder); send WAV"
        )
    if fmt != "wav":
        raise ContentError(f"{field}.format", f"unsupported audio format {fmt!r} (supported: wav)")
    if isinstance(data, str):
        return MediaItem("audio", "input_audio", field, data=_b64(data, field))
    if data is not None and rules.objects:
        return MediaItem("audio", "input_audio", field, value=data)
    raise ContentError(field, _NEEDS["input_audio"])


def _reference(url: str, kind: str, t: str, field: str, rules: ContentRules) -> MediaItem:
    """A source string: a data: URL (decoded here), or a local file (checked by the rules)."""
    lower = url[:16].lower()
    if lower.startswith("data:"):
        mime, payload = split_data_url(url, field)
        if kind == "image" and not mime.startswith("image/"):
            raise ContentError(field, f"not an image data URL (media type {mime or 'missing'!r})")
        if kind == "audio" and mime not in WAV_TYPES:
            raise ContentError(
                field, f"unsupported audio type {mime!r}; send WAV (data:audio/wav;base64,...)"
            )
        return MediaItem(kind, t, field, data=_b64(payload, field))
    if lower.startswith(("http://", "https://")):
        raise ContentError(
            field,
            f"autoglm-jax does not fetch URLs; send the {kind} inline as a data: URL "
            f"({_INLINE_EXAMPLE[kind]})",
        )
    if lower.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ContentError(field, "file URLs must name a local file (file:///path), not a host")
        path = urllib.parse.unquote(parsed.path)
    elif "://" in url[:12]:
        raise ContentError(field, f"unsupported URL scheme {url.split('://')[0]!r}")
    else:
        path = url
    return MediaItem(kind, t, field, path=_local_path(path, kind, field, rules))


def _local_path(path: str, kind: str, field: str, rules: ContentRules) -> str:
    if not rules.files:
        raise ContentError(
            field,
            f"local {kind} paths are disabled; allow the files under a folder with "
            f"{rules.media_root_name} DIR",
        )
    if rules.base_dir is not None:
        path = str((Path(rules.base_dir) / path).resolve())
    if rules.media_root is not None:
        root = os.path.realpath(rules.media_root)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise ContentError(field, f"{path!r} is outside {rules.media_root_name}")
    return path


def split_data_url(url: str, field: str) -> tuple[str, str]:
    """data:<type>;base64,<data> -> (lower-case media type, base64 payload)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().startswith("data:"):
        raise ContentError(field, "malformed data URL (expected data:<type>;base64,<data>)")
    fields = header[len("data:") :].split(";")
    if "base64" not in fields[1:]:
        raise ContentError(field, "only base64 data URLs are supported")
    return fields[0].strip().lower(), payload


def _b64(payload: str, field: str) -> bytes:
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ContentError(field, f"invalid base64 data ({e})") from None
    if not data:
        raise ContentError(field, "empty data")
    return data


# --- loading ----------------------------------------------------------------------------------


def load_media(item: MediaItem, rules: ContentRules) -> MediaItem:
    """The item with `loaded` set: u8[H, W, 3] for an image, a Waveform for audio."""
    if item.loaded is not None:
        return item
    data = item.data
    if item.path is not None:
        if not os.path.isfile(item.path):
            raise ContentError(item.field, f"no such {item.kind} file {item.path!r}")
        try:
            with open(item.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ContentError(item.field, f"{item.path!r}: {e.strerror}") from None
    source = data if data is not None else item.value
    where = f"{item.path!r}: " if item.path is not None else ""
    try:
        if item.kind == "image":
            if isinstance(source, (bytes, bytearray)):
                _check_pixels(bytes(source), item.field, rules.max_image_pixels)
            loaded: Any = load_image(source)
        else:
            loaded = source if isinstance(source, Waveform) else Waveform(*read_wav(source))
            _check_seconds(loaded, item.field, rules.max_audio_seconds)
    except (ImageError, AudioError, OSError) as e:
        raise ContentError(item.field, where + _strip_what(str(e))) from None
    return dataclasses.replace(item, loaded=loaded)


def _check_pixels(data: bytes, field: str, limit: int | None) -> None:
    """Refuse an image too large to decode safely, from its header alone (a small PNG can
    declare gigapixels)."""
    if limit is None:
        return
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - load_image reports undecodable data precisely
        return
    if w * h > limit:
        raise ContentError(field, f"image is {w}x{h} pixels, more than the {limit} accepted")


def _check_seconds(clip: Waveform, field: str, limit: float | None) -> None:
    if limit is not None and clip.seconds > limit:
        raise ContentError(
            field, f"audio is {clip.seconds:.1f} s long, more than the {limit:g} s accepted"
        )


_DECODER_PREFIX = re.compile(r"^(image \d+ \((<\d+ bytes>|'[^']*'|\w+)\)|<bytes>|<audio>): ")


def _strip_what(message: str) -> str:
    """Drop the decoder's own "image 0 (<123 bytes>): " / "<bytes>: " prefix (the error names
    the field instead)."""
    return _DECODER_PREFIX.sub("", message, count=1)


__all__ = [
    "Content",
    "ContentError",
    "ContentRules",
    "MediaItem",
    "TextSegment",
    "load_media",
    "media_item",
    "parse_messages",
    "parse_part",
    "split_data_url",
]
