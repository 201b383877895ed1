"""The official openai client against the live server: chat (whole and streamed), completions,
models, n, stop strings, seeds, usage (checked against the tokenizer), logprobs, and media parts
refused by a text-only model."""

from __future__ import annotations

import pytest

from .helpers import (
    API_KEY,
    MAX_MODEL_LEN,
    MODEL,
    chat_prompt_tokens,
    data_url,
    png_bytes,
    wav_bytes,
)

openai = pytest.importorskip("openai")

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
    yield c
    c.close()


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model" and models[0].owned_by
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_whole_response_and_usage(client, tokenizer):
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=7, extra_body={"ignore_eos": True}
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES)
    assert r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_chat_stream_with_include_usage_matches_whole_response(client, tokenizer):
    kw = dict(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=9,
        seed=11,
        temperature=0.9,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    whole = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == whole.choices[0].message.content
    streamed_lp = [e for c in body if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(streamed_lp) == 9 == last.usage.completion_tokens
    assert [e.token for e in streamed_lp] == [e.token for e in whole.choices[0].logprobs.content]
    for e in streamed_lp:
        assert len(e.top_logprobs) == 2 and e.logprob <= 0
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
    assert last.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES)
    assert last.usage.total_tokens == last.usage.prompt_tokens + 9


def test_repeated_long_prompt_reports_cached_tokens(client):
    messages = [{"role": "user", "content": "cache me " * 40}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 100
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens and cached % 8 == 0  # whole 8-token pages


def test_seed_gives_identical_text_and_other_seeds_differ(client):
    kw = dict(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        temperature=1.0,
        extra_body={"ignore_eos": True},
    )
    a = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    c = client.chat.completions.create(**kw, seed=4321).choices[0].message.content
    assert a == b
    assert a != c
    # OpenAI allows any 64-bit seed; the engine's seeds are unsigned (they wrap).
    d = client.chat.completions.create(**kw, seed=-7).choices[0].message.content
    assert d == client.chat.completions.create(**kw, seed=-7).choices[0].message.content
    assert client.chat.completions.create(**kw, seed=2**64 - 1).usage.completion_tokens == 12


def test_n2_whole_and_streamed(client):
    kw = dict(
        model=MODEL, messages=MESSAGES, max_tokens=6, n=2, seed=5, extra_body={"ignore_eos": True}
    )
    r = client.chat.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content  # seeds 5 and 6
    assert r.usage.completion_tokens == 12
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1}
    assert [texts[0], texts[1]] == [c.message.content for c in r.choices]


def _printable_window(text: str) -> str | None:
    for i in range(2, len(text) - 2):
        w = text[i : i + 2]
        if w.isascii() and w.isprintable() and w.strip() == w:
            return w
    return None


def test_stop_strings_cut_the_text(client):
    base = dict(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=24,
        extra_body={"ignore_eos": True},
    )
    full = client.chat.completions.create(**base).choices[0].message.content
    stop = _printable_window(full)
    if stop is None:
        pytest.skip(f"the random model's greedy text has no printable window: {full!r}")
    r = client.chat.completions.create(**base, stop=[stop, "never-there"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].model_extra["stop_reason"] == stop
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**base, stop=stop, stream=True)
        if c.choices
    )
    assert streamed == full[: full.index(stop)]


def test_completions_string_and_token_prompts(client, tokenizer):
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(tokenizer.encode("Once upon a time"))
    assert r.usage.completion_tokens == 5
    ids = tokenizer.encode("Once upon a time")
    same = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=5, seed=3, extra_body={"ignore_eos": True}
    )
    again = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=5,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    assert same.choices[0].text == again.choices[0].text
    lp = (
        client.completions.create(
            model=MODEL, prompt=ids, max_tokens=4, logprobs=3, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .logprobs
    )
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        # A dict by token text: ids that decode alike ("\ufffd" byte pieces) share a key.
        assert 1 <= len(top) <= 3
        assert max(top.values()) >= chosen - 1e-5  # the top-3 of the same distribution


def test_completions_stream_and_batch(client):
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="abc",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"
    batch = client.completions.create(
        model=MODEL, prompt=["abc", "defg"], max_tokens=3, n=2, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    assert batch.usage.completion_tokens == 12


def test_completions_echo(client, tokenizer):
    kw = dict(model=MODEL, prompt="Echo me", max_tokens=3, seed=2, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kw).choices[0].text
    echoed = client.completions.create(**kw, echo=True).choices[0].text
    assert echoed == "Echo me" + plain
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(**kw, echo=True, stream=True)
        if c.choices
    )
    assert streamed == echoed


def test_thinking_flags_are_accepted_and_render_the_prompt(client, tokenizer):
    on = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=2,
        extra_body={"enable_thinking": True, "return_reasoning": True},
    )
    off = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    # Thinking off appends "<think></think>\n" to the prompt (GLM-4.5V's form).
    assert off.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES, enable_thinking=False)
    assert off.usage.prompt_tokens > on.usage.prompt_tokens
    assert off.choices[0].message.model_extra.get("reasoning_content") is None


def test_image_and_audio_parts_on_a_text_only_model(client):
    """(The success path, on the tiny-mm model, is in test_multimodal.py.)"""
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes(), "image/png")}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            max_tokens=2,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}
            ],
        )
    assert "does not accept image input" in e.value.message
    audio = {
        "type": "input_audio",
        "input_audio": {
            "data": data_url(wav_bytes(), "audio/wav").split(",", 1)[1],
            "format": "wav",
        },
    }
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            max_tokens=2,
            messages=[{"role": "user", "content": [audio, {"type": "text", "text": "transcribe"}]}],
        )
    assert "does not accept audio input" in e.value.message
