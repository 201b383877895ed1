"""The shared stream loop over a scripted event source (no engine, no HTTP): chat and
completions say the same thing for the same events, streamed and whole agree, and the typed
events still read as the tuples they replaced."""

from __future__ import annotations

import asyncio

import pytest

from autoglm_jax.engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from autoglm_jax.serve.events import DeltaEvent, DoneEvent, ErrorEvent
from autoglm_jax.serve.logprobs import TokenText
from autoglm_jax.serve.protocol import APIError
from autoglm_jax.serve.reasoning import ReasoningParser, ReasoningStream
from autoglm_jax.serve.renderers import ChatRenderer, CompletionRenderer
from autoglm_jax.serve.streaming import SSE_KEEPALIVE, stream_chunks

from .helpers import is_openai_error, parse_sse


def _script(
    pieces: dict[int, list[str]], token_of, prompt=(1, 2, 3), finish="stop", with_logprobs=False
):
    """Events of choices streaming `pieces` (one token each), interleaved, then the whole
    outputs by index."""
    events, outputs = [], {}
    tokens = {i: [token_of(p) for p in ps] for i, ps in pieces.items()}
    lps = {i: [-0.5 - k for k in range(len(ps))] for i, ps in pieces.items()}
    for k in range(max(len(ps) for ps in pieces.values())):
        for i, ps in pieces.items():
            if k >= len(ps):
                continue
            last = k == len(ps) - 1
            d = StreamDelta(
                f"r-{i}",
                ps[k],
                [tokens[i][k]],
                last,
                finish if last else None,
                [{tokens[i][k]: lps[i][k]}] if with_logprobs else None,
                [lps[i][k]] if with_logprobs else None,
            )
            if last:
                comp = CompletionOutput(
                    0,
                    "".join(ps),
                    tokens[i],
                    finish,
                    None,
                    [{t: v} for t, v in zip(tokens[i], lps[i])] if with_logprobs else None,
                    lps[i] if with_logprobs else None,
                )
                outputs[i] = RequestOutput(
                    f"r-{i}", list(prompt), [comp], True, num_cached_tokens=1
                )
                events.append(DoneEvent(i, d, outputs[i]))
            else:
                events.append(DeltaEvent(i, d))
    return events, outputs


async def _source(events):
    for ev in events:
        yield ev


def _stream(renderer, events, indices):
    async def run():
        return [c async for c in stream_chunks(_source(events), renderer, indices)]

    return asyncio.run(run())


def _chat(tokenizer, n=2, usage=True, thinking=False, logprobs=False):
    def splitter():
        return ReasoningStream(ReasoningParser()) if thinking else None

    return ChatRenderer(
        "m",
        n,
        usage,
        TokenText(tokenizer),
        splitter=splitter,
        return_reasoning=True,
        logprobs=logprobs,
    )


def _completion(tokenizer, n=2, usage=True, logprobs=False):
    return CompletionRenderer("m", n, usage, TokenText(tokenizer), echoes=None, logprobs=logprobs)


def _streamed(chunks, field):
    """index -> (joined text of `field`, finish_reason), and the usage chunk."""
    events, done = parse_sse("".join(chunks).splitlines())
    assert done
    out: dict[int, list] = {}
    usage = None
    for e in events:
        if not e["choices"]:
            usage = e["usage"]
            continue
        (c,) = e["choices"]
        text, finish = out.setdefault(c["index"], ["", None])
        piece = field(c)
        out[c["index"]] = [text + (piece or ""), c["finish_reason"] or finish]
    return {i: tuple(v) for i, v in out.items()}, usage


def _chat_text(c):
    return c["delta"].get("content")


def _completion_text(c):
    return c["text"]


@pytest.fixture
def token_of(tokenizer):
    def one(text):
        (t,) = tokenizer.encode(text)
        return t

    return one


def test_chat_and_completions_say_the_same_for_the_same_events(tokenizer, token_of):
    events, outputs = _script({0: ["A", "B", "C"], 1: ["D", "E"]}, token_of)
    chat, usage_chat = _streamed(_stream(_chat(tokenizer), events, [0, 1]), _chat_text)
    text, usage_text = _streamed(_stream(_completion(tokenizer), events, [0, 1]), _completion_text)
    assert chat == text == {0: ("ABC", "stop"), 1: ("DE", "stop")}
    # n=2 choices of one prompt: its 3 prompt tokens (1 cached) count once
    assert (
        usage_chat
        == usage_text
        == {
            "prompt_tokens": 3,
            "completion_tokens": 5,
            "total_tokens": 8,
            "prompt_tokens_details": {"cached_tokens": 1},
        }
    )

    whole_chat = _chat(tokenizer).response(outputs)
    whole_text = _completion(tokenizer).response(outputs)
    assert whole_chat["usage"] == whole_text["usage"] == usage_chat
    assert (
        [(c["message"]["content"], c["finish_reason"]) for c in whole_chat["choices"]]
        == [(c["text"], c["finish_reason"]) for c in whole_text["choices"]]
        == [chat[0], chat[1]]
    )


def test_streamed_reasoning_split_equals_the_whole_one(tokenizer, token_of):
    # the tags arrive split over deltas; a held-back partial tag is flushed at the end
    pieces = ["<", "think", ">", "pl", "an", "</", "think", ">", "go", "<"]
    events, outputs = _script({0: pieces}, lambda piece: 1)  # no tag tokens: text only
    renderer = _chat(tokenizer, n=1, usage=False, thinking=True)
    chunks, done = parse_sse("".join(_stream(renderer, events, [0])).splitlines())
    assert done and chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    streamed = (
        "".join(d.get("reasoning", "") for d in deltas),
        "".join(d.get("content", "") for d in deltas),
    )
    message = _chat(tokenizer, n=1, thinking=True).response(outputs)["choices"][0]["message"]
    assert streamed == (message["reasoning"], message["content"]) == ("plan", "go<")


def test_streamed_logprobs_join_into_the_whole_ones(tokenizer, token_of):
    events, outputs = _script({0: ["A", "B", "C"]}, token_of, with_logprobs=True)
    chat = parse_sse(
        "".join(_stream(_chat(tokenizer, 1, logprobs=True), events, [0])).splitlines()
    )[0]
    streamed = [
        e
        for c in chat
        if c["choices"] and c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    whole = _chat(tokenizer, 1, logprobs=True).response(outputs)["choices"][0]["logprobs"]
    assert streamed == whole["content"] and [e["token"] for e in streamed] == ["A", "B", "C"]

    text = parse_sse(
        "".join(_stream(_completion(tokenizer, 1, logprobs=True), events, [0])).splitlines()
    )[0]
    columns = [c["choices"][0]["logprobs"] for c in text if c["choices"]]
    whole = _completion(tokenizer, 1, logprobs=True).response(outputs)["choices"][0]["logprobs"]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for c in columns for v in c[key]] == whole[key], key
    assert whole["text_offset"] == [0, 1, 2]


def test_an_error_event_ends_the_stream_after_keepalives(tokenizer, token_of):
    events, _ = _script({0: ["A", "B", "C"]}, token_of)
    script = [None, events[0], ErrorEvent(None, APIError(503, "engine gone")), events[1]]
    for renderer in (_chat(tokenizer, 1), _completion(tokenizer, 1)):
        chunks = _stream(renderer, script, [0])
        assert SSE_KEEPALIVE in chunks
        parsed, done = parse_sse("".join(chunks).splitlines())
        assert done and is_openai_error(parsed[-1], 503)
        # the opening (chat), "A", the error: nothing after it, no usage chunk
        assert all(c["choices"] for c in parsed[:-1]) and '"B"' not in "".join(chunks)


def test_events_are_typed_and_still_read_as_tuples(token_of):
    events, outputs = _script({0: ["A", "B"]}, token_of)
    delta, done = events
    assert isinstance(delta, DeltaEvent) and delta.index == 0 and delta.delta.text == "A"
    assert (delta[0], delta[1], delta[2]) == ("delta", 0, delta.delta)
    kind, index, last, output = done
    assert (kind, index, last, output) == ("done", 0, done.delta, outputs[0])
    error = APIError(429, "busy")
    assert tuple(ErrorEvent(None, error)) == ("error", None, error)
