"""The one content-part parser: the grammar every caller shares, and the policy knobs."""

import base64
import io
import wave

import numpy as np
import pytest
from PIL import Image

from autoglm_jax.processing.audio import Waveform
from autoglm_jax.processing.content import ContentError, ContentRules, parse_messages


def _png(color=(10, 20, 30), size=(6, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _wav(samples=800, rate=8000):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(samples, np.int16).tobytes())
    return buf.getvalue()


def _url(data, mime):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def test_every_source_form_decodes_in_order(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((200, 0, 0)))
    (tmp_path / "b.wav").write_bytes(_wav())
    messages = _user(
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": _url(_png(), "image/png")}},
        {"type": "image", "path": "a.png"},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav()).decode()}},
        {"type": "audio_url", "audio_url": {"url": _url(_wav(), "audio/wav")}},
        {"type": "audio", "audio": "b.wav"},
    )
    content = parse_messages(messages, ContentRules(base_dir=str(tmp_path)))
    assert [t.text for t in content.texts] == ["look"]
    assert [(m.kind, m.part_type) for m in content.media] == [
        ("image", "image_url"),
        ("image", "image"),
        ("audio", "input_audio"),
        ("audio", "audio_url"),
        ("audio", "audio"),
    ]
    assert [im.shape for im in content.images] == [(4, 6, 3), (4, 6, 3)]
    assert tuple(content.images[1][0, 0]) == (200, 0, 0)
    assert all(isinstance(a, Waveform) and a.sample_rate == 8000 for a in content.audios)
    # the rendered messages carry the decoded media where the template puts placeholders
    rendered = content.messages[0]["content"]
    assert [p["type"] for p in rendered] == ["text", "image", "image", "audio", "audio", "audio"]
    assert rendered[1]["image"] is content.images[0]


def test_parsing_without_loading_resolves_paths_only(tmp_path):
    messages = _user({"type": "image_url", "image_url": {"url": "sub/x.png"}})
    content = parse_messages(messages, ContentRules(base_dir=str(tmp_path)), load=False)
    (item,) = content.media
    assert item.path == str(tmp_path / "sub" / "x.png") and item.loaded is None
    assert content.messages[0]["content"][0] == {"type": "image", "image": item.path}


@pytest.mark.parametrize(
    "part, field, text",
    [
        ("hi", "messages[0].content[0]", "must be an object"),
        ({"text": "x"}, "messages[0].content[0].type", "string `type`"),
        ({"type": "text", "text": 3}, "messages[0].content[0].text", "string `text`"),
        ({"type": "video_url"}, "messages[0].content[0].type", "video"),
        ({"type": "hologram"}, "messages[0].content[0].type", "hologram"),
        ({"type": "image_url", "image_url": {}}, "messages[0].content[0].image_url.url", "url"),
        (
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            "messages[0].content[0].image_url.url",
            "does not fetch",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}},
            "messages[0].content[0].image_url.url",
            "base64",
        ),
        (
            {"type": "image_url", "image_url": {"url": _url(b"hi", "text/plain")}},
            "messages[0].content[0].image_url.url",
            "not an image",
        ),
        (
            {"type": "image_url", "image_url": {"url": _url(b"\x89PNG....", "image/png")}},
            "messages[0].content[0].image_url.url",
            "corrupt or unrecognized",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}},
            "messages[0].content[0].input_audio.format",
            "mp3",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"OggS").decode()}},
            "messages[0].content[0].input_audio",
            "not a WAV",
        ),
        (
            {"type": "audio_url", "audio_url": {"url": "http://x/a.wav"}},
            "messages[0].content[0].audio_url.url",
            "nothing is fetched",
        ),
        ({"type": "image", "image": "/no/such.png"}, "messages[0].content[0].image", "no such"),
    ],
)
def test_errors_name_the_field(part, field, text):
    with pytest.raises(ContentError) as e:
        parse_messages(_user(part), ContentRules())
    assert e.value.field == field and text in str(e.value)
    assert str(e.value).startswith(field + ": ")


def test_policy_knobs(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    local = _user({"type": "image_url", "image_url": {"url": f"file://{tmp_path}/ok.png"}})
    with pytest.raises(ContentError, match="disabled.*--flag"):
        parse_messages(local, ContentRules(files=False, media_root_name="--flag"))
    inside = ContentRules(media_root=str(tmp_path), media_root_name="--flag")
    assert len(parse_messages(local, inside).images) == 1
    outside = _user({"type": "image_url", "image_url": {"url": "/etc/hostname"}})
    with pytest.raises(ContentError, match="outside --flag"):
        parse_messages(outside, inside)
    with pytest.raises(ContentError, match="6x4 pixels"):
        parse_messages(local, ContentRules(max_image_pixels=10))
    clip = _user({"type": "audio", "audio": Waveform(np.zeros(16000, np.float32), 8000)})
    with pytest.raises(ContentError, match="2.0 s long"):
        parse_messages(clip, ContentRules(objects=True, max_audio_seconds=1.0))
    # lenient rules leave what they do not know, and malformed parts, to the template
    odd = [{"role": "user", "content": ["raw", {"type": "tool_result"}, {"type": "text"}]}, "x"]
    lenient = ContentRules(strict=False, refuse_unknown=False)
    assert parse_messages(odd, lenient).messages == odd
    # objects only where the rules allow them (a server's JSON never holds one)
    image = _user({"type": "image", "image": np.zeros((2, 2, 3), np.uint8)})
    assert parse_messages(image, ContentRules(objects=True)).images[0].shape == (2, 2, 3)
    with pytest.raises(ContentError, match="image part needs"):
        parse_messages(image, ContentRules())
