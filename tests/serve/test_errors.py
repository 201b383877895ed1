"""A catalogue of malformed requests: each gets its 4xx in OpenAI's error shape, none a 500,
and the server is healthy and serving afterwards."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import (
    API_KEY,
    MAX_BODY,
    MAX_MODEL_LEN,
    MODEL,
    data_url,
    is_openai_error,
    png_bytes,
    wav_bytes,
)

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return {"json": {"model": MODEL, "messages": HI, "max_tokens": 2, **fields}}


def comp(**fields):
    return {"json": {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}}


def raw(kw, extra_field):
    """A body with a field JSON cannot carry but Python's json module reads (NaN, Infinity)."""
    text = json.dumps(kw["json"])
    return {"content": text[:-1] + ", " + extra_field + "}"}


def user_parts(*parts):
    return chat(messages=[{"role": "user", "content": list(parts)}])


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def audio(data, fmt="wav"):
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


WAV = wav_bytes()
B64_WAV = base64.b64encode(WAV).decode()
PNG_URL = data_url(png_bytes(), "image/png")


def catalogue(media_dir):
    """(name, method, path, request kwargs, status, expected param or None, message part)."""
    return [
        (
            "bad JSON",
            "POST",
            CHAT,
            {"content": b'{"model": "tiny", "messages": ['},
            400,
            None,
            "not valid JSON",
        ),
        ("JSON array body", "POST", CHAT, {"content": b"[1, 2]"}, 400, None, "JSON object"),
        ("empty body", "POST", CHAT, {"content": b""}, 400, None, "empty"),
        ("not UTF-8", "POST", CHAT, {"content": b"\xff\xfe{"}, 400, None, "not valid JSON"),
        ("messages missing", "POST", CHAT, {"json": {"model": MODEL}}, 400, "messages", ""),
        ("messages empty", "POST", CHAT, chat(messages=[]), 400, "messages", "at least 1"),
        ("messages a string", "POST", CHAT, chat(messages="hi"), 400, "messages", ""),
        (
            "bad role",
            "POST",
            CHAT,
            chat(messages=[{"role": "robot", "content": "x"}]),
            400,
            "messages[0].role",
            "",
        ),
        (
            "content a number",
            "POST",
            CHAT,
            chat(messages=[{"role": "user", "content": 5}]),
            400,
            "messages[0].content",
            "",
        ),
        (
            "unknown model",
            "POST",
            CHAT,
            chat(model="gpt-4o"),
            404,
            "model",
            "The model `gpt-4o` does not exist.",
        ),
        ("negative max_tokens", "POST", CHAT, chat(max_tokens=-5), 400, "max_tokens", ""),
        (
            "zero max_completion_tokens",
            "POST",
            CHAT,
            chat(max_completion_tokens=0),
            400,
            "max_completion_tokens",
            "",
        ),
        ("max_tokens a string", "POST", CHAT, chat(max_tokens="10"), 400, "max_tokens", ""),
        ("temperature below 0", "POST", CHAT, chat(temperature=-0.5), 400, "temperature", ""),
        (
            "temperature far too high",
            "POST",
            CHAT,
            chat(temperature=1000.0),
            400,
            "temperature",
            "",
        ),
        ("temperature a word", "POST", CHAT, chat(temperature="hot"), 400, "temperature", ""),
        (
            "temperature NaN",
            "POST",
            CHAT,
            raw(chat(), '"temperature": NaN'),
            400,
            "temperature",
            "",
        ),
        (
            "temperature Infinity",
            "POST",
            CHAT,
            raw(chat(), '"temperature": Infinity'),
            400,
            "temperature",
            "",
        ),
        ("top_p zero", "POST", CHAT, chat(top_p=0.0), 400, "top_p", ""),
        ("n zero", "POST", CHAT, chat(n=0), 400, "n", ""),
        ("n fractional", "POST", CHAT, chat(n=1.5), 400, "n", ""),
        (
            "frequency_penalty out of range",
            "POST",
            CHAT,
            chat(frequency_penalty=3),
            400,
            "frequency_penalty",
            "",
        ),
        (
            "top_logprobs too many",
            "POST",
            CHAT,
            chat(logprobs=True, top_logprobs=50),
            400,
            "top_logprobs",
            "",
        ),
        (
            "top_logprobs without logprobs",
            "POST",
            CHAT,
            chat(top_logprobs=2),
            400,
            "top_logprobs",
            "logprobs",
        ),
        (
            "stream_options without stream",
            "POST",
            CHAT,
            chat(stream_options={"include_usage": True}),
            400,
            "stream_options",
            "stream",
        ),
        ("stream not a boolean", "POST", CHAT, chat(stream="yes"), 400, "stream", ""),
        ("empty stop string", "POST", CHAT, chat(stop=[""]), 400, "stop", "empty"),
        ("stop of numbers", "POST", CHAT, chat(stop=[1, 2]), 400, "stop[0]", ""),
        ("seed a string", "POST", CHAT, chat(seed="42"), 400, "seed", ""),
        ("logit_bias", "POST", CHAT, chat(logit_bias={"5": 10}), 400, "logit_bias", ""),
        (
            "json_schema response_format",
            "POST",
            CHAT,
            chat(response_format={"type": "json_schema"}),
            400,
            "response_format",
            "",
        ),
        (
            "priority under fcfs",
            "POST",
            CHAT,
            chat(priority=-1),
            400,
            "priority",
            "scheduling-policy",
        ),
        (
            "reserved chat_template_kwargs",
            "POST",
            CHAT,
            chat(chat_template_kwargs={"messages": []}),
            400,
            "chat_template_kwargs",
            "",
        ),
        (
            "enable_thinking not boolean",
            "POST",
            CHAT,
            chat(chat_template_kwargs={"enable_thinking": "yes"}),
            400,
            "chat_template_kwargs.enable_thinking",
            "",
        ),
        (
            "prompt over max_model_len",
            "POST",
            CHAT,
            chat(messages=[{"role": "user", "content": "word " * (2 * MAX_MODEL_LEN)}]),
            400,
            "messages",
            "maximum context length",
        ),
        (
            "prompt plus max_tokens over max_model_len",
            "POST",
            CHAT,
            chat(max_tokens=MAX_MODEL_LEN),
            400,
            "max_tokens",
            "maximum context length",
        ),
        (
            "invalid base64 image",
            "POST",
            CHAT,
            user_parts(image("data:image/png;base64,@@not base64@@")),
            400,
            "messages[0].content[0].image_url.url",
            "base64",
        ),
        (
            "non-image data URI",
            "POST",
            CHAT,
            user_parts(image(data_url(b"hello", "text/plain"))),
            400,
            "messages[0].content[0].image_url.url",
            "not an image",
        ),
        (
            "corrupt image bytes",
            "POST",
            CHAT,
            user_parts(image(data_url(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png"))),
            400,
            "messages[0].content[0].image_url.url",
            "corrupt or unrecognized",
        ),
        (
            "image declaring 48 megapixels",
            "POST",
            CHAT,
            user_parts(image(data_url(_png_header_only(8000, 6000), "image/png"))),
            400,
            "messages[0].content[0].image_url.url",
            "8000x6000 pixels",
        ),
        (
            "file URL naming a host",
            "POST",
            CHAT,
            user_parts(image("file://example.com/red.png")),
            400,
            "messages[0].content[0].image_url.url",
            "not a host",
        ),
        (
            "http image URL",
            "POST",
            CHAT,
            user_parts(image("https://example.com/cat.png")),
            400,
            "messages[0].content[0].image_url.url",
            "does not fetch",
        ),
        (
            "local image outside the allowed directory",
            "POST",
            CHAT,
            user_parts(image("/etc/hostname")),
            400,
            "messages[0].content[0].image_url.url",
            "outside --allowed-local-media-path",
        ),
        (
            "missing local image",
            "POST",
            CHAT,
            user_parts(image(f"file://{media_dir}/missing.png")),
            400,
            "messages[0].content[0].image_url.url",
            "no such image file",
        ),
        (
            "image_url without url",
            "POST",
            CHAT,
            user_parts({"type": "image_url", "image_url": {}}),
            400,
            "messages[0].content[0].image_url.url",
            "",
        ),
        (
            "truncated WAV",
            "POST",
            CHAT,
            user_parts(audio(base64.b64encode(WAV[: len(WAV) // 2 + 1]).decode())),
            400,
            "messages[0].content[0].input_audio",
            "truncated",
        ),
        (
            "not a WAV",
            "POST",
            CHAT,
            user_parts(audio(base64.b64encode(b"OggS" * 20).decode())),
            400,
            "messages[0].content[0].input_audio",
            "not a WAV",
        ),
        (
            "invalid base64 audio",
            "POST",
            CHAT,
            user_parts(audio("%%%")),
            400,
            "messages[0].content[0].input_audio",
            "base64",
        ),
        (
            "audio_url over http",
            "POST",
            CHAT,
            user_parts({"type": "audio_url", "audio_url": {"url": "http://x/a.wav"}}),
            400,
            "messages[0].content[0].audio_url.url",
            "nothing is fetched",
        ),
        (
            "audio_url that is not WAV",
            "POST",
            CHAT,
            user_parts({"type": "audio_url", "audio_url": {"url": data_url(WAV, "audio/ogg")}}),
            400,
            "messages[0].content[0].audio_url.url",
            "audio/ogg",
        ),
        (
            "valid WAV audio_url, text-only model",
            "POST",
            CHAT,
            user_parts({"type": "audio_url", "audio_url": {"url": data_url(WAV, "audio/wav")}}),
            400,
            "messages",
            "does not accept audio input",
        ),
        (
            "mp3 audio",
            "POST",
            CHAT,
            user_parts(audio(B64_WAV, "mp3")),
            400,
            "messages[0].content[0].input_audio.format",
            "mp3",
        ),
        (
            "video part",
            "POST",
            CHAT,
            user_parts({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA=="}}),
            400,
            "messages[0].content[0].type",
            "video",
        ),
        (
            "unknown part type",
            "POST",
            CHAT,
            user_parts({"type": "hologram"}),
            400,
            "messages[0].content[0].type",
            "hologram",
        ),
        (
            "valid image, text-only model",
            "POST",
            CHAT,
            user_parts({"type": "text", "text": "see"}, image(PNG_URL)),
            400,
            "messages",
            "does not accept image input",
        ),
        (
            "valid local image, text-only model",
            "POST",
            CHAT,
            user_parts(image(f"file://{media_dir}/red.png")),
            400,
            "messages",
            "does not accept image input",
        ),
        (
            "valid WAV, text-only model",
            "POST",
            CHAT,
            user_parts(audio(B64_WAV)),
            400,
            "messages",
            "does not accept audio input",
        ),
        ("completions without prompt", "POST", COMP, {"json": {"model": MODEL}}, 400, "prompt", ""),
        ("completions empty prompt", "POST", COMP, comp(prompt=""), 400, "prompt", "empty"),
        ("completions empty prompt list", "POST", COMP, comp(prompt=[]), 400, "prompt", "empty"),
        (
            "completions token ids out of range",
            "POST",
            COMP,
            comp(prompt=[1, 2, 10**6]),
            400,
            "prompt",
            "out of range",
        ),
        (
            "completions negative token id",
            "POST",
            COMP,
            comp(prompt=[-1]),
            400,
            "prompt",
            "out of range",
        ),
        ("completions suffix", "POST", COMP, comp(suffix="end"), 400, "suffix", ""),
        ("completions logprobs too many", "POST", COMP, comp(logprobs=21), 400, "logprobs", ""),
        (
            "completions prompt over max_model_len",
            "POST",
            COMP,
            comp(prompt=list(range(MAX_MODEL_LEN))),
            400,
            "prompt",
            "maximum context length",
        ),
        ("completions unknown model", "POST", COMP, comp(model="nope"), 404, "model", "nope"),
        (
            "oversized body",
            "POST",
            CHAT,
            {"content": json.dumps({"model": MODEL, "messages": HI, "pad": "x" * MAX_BODY})},
            413,
            None,
            "larger than",
        ),
        (
            "oversized chunked body",
            "POST",
            CHAT,
            {"content": iter([b'{"model": "tiny", "pad": "'] + [b"x" * 65536] * 20 + [b'"}'])},
            413,
            None,
            "larger than",
        ),
        (
            "arrays nested 5000 deep",
            "POST",
            CHAT,
            {"content": "[" * 5000 + "]" * 5000},
            400,
            None,
            "nests deeper",
        ),
        (
            "objects nested 5000 deep in a field",
            "POST",
            CHAT,
            {"content": '{"model": "tiny", "messages": ' + '{"a": ' * 5000 + "1" + "}" * 5001},
            400,
            None,
            "nests deeper",
        ),
        (
            "lone surrogate in chat content",
            "POST",
            CHAT,
            {"content": '{"messages": [{"role": "user", "content": "hi \\ud800"}]}'},
            400,
            "messages[0].content",
            "surrogate",
        ),
        (
            "lone surrogate in a completions prompt",
            "POST",
            COMP,
            {"content": '{"prompt": "\\udfff x", "max_tokens": 2}'},
            400,
            "prompt",
            "surrogate",
        ),
        ("unknown route", "GET", "/v1/engines", {}, 404, None, "Not found"),
        ("wrong method", "GET", CHAT, {}, 405, None, ""),
        ("unknown model card", "GET", "/v1/models/other", {}, 404, "model", "other"),
    ]


def test_catalogue_of_malformed_requests(server, media_dir):
    cases = catalogue(media_dir)
    assert len(cases) >= 25
    failures = []
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as http:
        for name, method, path, kw, status, param, text in cases:
            r = http.request(method, path, **kw)
            try:
                body = r.json()
            except ValueError:
                body = r.text
            ok = (
                r.status_code == status
                and is_openai_error(body, status)
                and (param is None or body["error"]["param"] == param)
                and text in body["error"]["message"]
            )
            if not ok:
                failures.append(f"{name}: {r.status_code} {body}")
    assert not failures, "\n".join(failures)
    assert httpx.get(f"{server.url}/health").status_code == 200
    r = server.post(CHAT, {"model": MODEL, "messages": HI, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert server.wait_idle()["running"] == 0


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}]
)
def test_api_key_is_required_on_v1_only(server, headers):
    r = httpx.post(
        f"{server.base_url}/chat/completions",
        headers=headers,
        json={"model": MODEL, "messages": HI},
    )
    assert r.status_code == 401 and is_openai_error(r.json(), 401)
    r = httpx.get(f"{server.base_url}/models", headers=headers)
    assert r.status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_unknown_fields_are_ignored(server):
    r = server.post(
        CHAT,
        {
            "model": MODEL,
            "messages": HI,
            "max_tokens": 2,
            "foo": {"bar": 1},
            "user": "u1",
            "tools": [],
            "parallel_tool_calls": False,
            "store": False,
            "metadata": {"k": "v"},
        },
    )
    assert r.status_code == 200, r.text
    r = server.post(CHAT, {"messages": HI, "max_tokens": 2})  # model may be left out
    assert r.status_code == 200 and r.json()["model"] == MODEL


def test_stream_error_shape_when_refused_before_streaming(server):
    r = server.post(CHAT, {"model": MODEL, "messages": HI, "stream": True, "max_tokens": -1})
    assert r.status_code == 400 and is_openai_error(r.json(), 400)
    assert r.headers["content-type"].startswith("application/json")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(codec=None), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "stop",
    "n",
    "stream",
    "logprobs",
    "top_logprobs",
    "seed",
    "stream_options",
    "tools",
    "response_format",
]
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "x"]), "content": JSON}
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from([CHAT, COMP]),
    body=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5)
    | st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=2), "max_tokens": st.integers(-2, 3)}
    )
    | JSON,
)
def test_any_json_body_gets_an_answer_or_a_4xx(server, path, body):
    """Generated JSON values, strings (lone surrogates included) and field types: never a 500,
    always OpenAI's error shape, and the server stays healthy."""
    if isinstance(body, dict) and "max_tokens" not in body:
        body["max_tokens"] = 2  # a generated request that is valid should finish quickly
    r = httpx.post(
        f"{server.url}{path}", headers=server.headers, timeout=60, content=json.dumps(body).encode()
    )
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert is_openai_error(r.json(), r.status_code), r.text
    assert httpx.get(f"{server.url}/health").status_code == 200
