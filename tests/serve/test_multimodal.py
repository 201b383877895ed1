"""Images and audio end to end on a live `--model tiny-mm` server (AutoGLM with a vision tower
and an audio encoder, random weights), through the openai client: the engine expands the image
placeholders (checked against the image processor's token count), audio parts are accepted,
streams agree with whole responses, and the prefix cache is keyed by the media's content."""

from __future__ import annotations

import base64

import pytest

from .helpers import API_KEY, chat_prompt_tokens, data_url, png_bytes, start_server, wav_bytes

openai = pytest.importorskip("openai")

MM_MODEL = "tiny-mm"
QUESTION = {"type": "text", "text": "what is on the screen?"}


@pytest.fixture(scope="module")
def mm_server(tmp_path_factory, xla_cache, media_dir):
    # No warm-up: these few short requests compile only the shapes they use (a cold start
    # would otherwise compile every shape of a second model).
    s = start_server(
        tmp_path_factory.mktemp("mm_server"),
        xla_cache,
        "--model",
        MM_MODEL,
        "--allowed-local-media-path",
        str(media_dir),
        "--no-warmup",
    )
    yield s
    code = s.stop()
    assert code == 0, s.log()[-3000:]
    assert "Traceback" not in s.log(), s.log()[-6000:]


@pytest.fixture(scope="module")
def client(mm_server):
    c = openai.OpenAI(base_url=mm_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    yield c
    c.close()


def _image_part(png: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(png, "image/png")}}


def _audio_part(wav: bytes) -> dict:
    return {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
    }


def _image_tokens(png: bytes) -> int:
    from autoglm_jax.processing.image import process_images

    (n,) = process_images([png]).num_image_tokens()
    return n


def _ask(client, *parts, **kw):
    return client.chat.completions.create(
        model=MM_MODEL,
        max_tokens=4,
        messages=[{"role": "user", "content": list(parts)}],
        extra_body={"ignore_eos": True},
        **kw,
    )


def test_image_part_is_expanded_by_the_engine(client, tokenizer):
    png = png_bytes((84, 56))
    r = _ask(client, _image_part(png), QUESTION)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    # The template writes one <|image|>; the engine expands it to the image's token count.
    rendered = chat_prompt_tokens(
        tokenizer, [{"role": "user", "content": [{"type": "image"}, QUESTION]}]
    )
    assert r.usage.prompt_tokens == rendered - 1 + _image_tokens(png)
    bigger = png_bytes((168, 112))
    r2 = _ask(client, _image_part(bigger), QUESTION)
    assert (
        r2.usage.prompt_tokens - r.usage.prompt_tokens
        == (_image_tokens(bigger) - _image_tokens(png))
        > 0
    )


def test_audio_part_and_both_together(client, tokenizer):
    r = _ask(client, _audio_part(wav_bytes(1.0)), QUESTION)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    assert r.usage.prompt_tokens == chat_prompt_tokens(
        tokenizer, [{"role": "user", "content": [{"type": "audio"}, QUESTION]}]
    )
    png = png_bytes((56, 56))
    both = _ask(client, _audio_part(wav_bytes(0.5)), _image_part(png), QUESTION)
    assert both.usage.prompt_tokens == r.usage.prompt_tokens + 2 + _image_tokens(png)


def test_streamed_image_request_matches_the_whole_one(client):
    parts = (_image_part(png_bytes((70, 98), color=(10, 200, 40))), QUESTION)
    whole = _ask(client, *parts, seed=3, temperature=0.8)
    chunks = list(
        _ask(
            client,
            *parts,
            seed=3,
            temperature=0.8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_prefix_cache_is_keyed_by_image_content(client):
    red, blue = png_bytes((56, 84), (220, 20, 20)), png_bytes((56, 84), (20, 20, 220))
    _ask(client, _image_part(red), QUESTION)
    again = _ask(client, _image_part(red), QUESTION)
    other = _ask(client, _image_part(blue), QUESTION)  # same size: the same token ids
    assert again.usage.prompt_tokens == other.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert other.usage.prompt_tokens_details.cached_tokens == 0


def test_local_image_under_the_allowed_directory(client, media_dir):
    local = _ask(
        client, {"type": "image_url", "image_url": {"url": f"file://{media_dir}/red.png"}}, QUESTION
    )
    inline = _ask(client, _image_part((media_dir / "red.png").read_bytes()), QUESTION)
    assert local.usage.prompt_tokens == inline.usage.prompt_tokens


def test_media_errors_on_a_multimodal_model(client):
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
    assert "corrupt or unrecognized image" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, _audio_part(wav_bytes(0.5)[:-101]))
    assert "truncated WAV" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # tiny-mm takes at most 60 s of audio
        _ask(client, _audio_part(wav_bytes(61.0, rate=4000)))
    assert "60" in e.value.message
