"""The <think>...</think> splitter: every way of cutting the text into deltas gives the same
split as the whole text, and tags the tokenizer skips (special tokens) are put back exactly."""

from __future__ import annotations

import random

import pytest

from autoglm_jax.processing.detokenizer import IncrementalDetokenizer
from autoglm_jax.serve.reasoning import ReasoningParser, TagInjector, reasoning_stream

CASES = [
    # text, (reasoning, content) with the prompt not ending in <think>
    ("<think>plan it</think><answer>do(x)</answer>", ("plan it", "<answer>do(x)</answer>")),
    ("\n<think>a<b</think>c", ("a<b", "\nc")),
    ("no tags at all", ("", "no tags at all")),
    ("<think>unfinished reasoning", ("unfinished reasoning", "")),
    ("<think></think>", ("", "")),
    ("x</think>y", ("", "x</think>y")),  # an end tag without a start is content
    ("<think>r</think>a<think>b", ("r", "a<think>b")),  # one reasoning block, as vLLM's glm45
    ("<thin", ("", "<thin")),  # a partial tag at the very end is flushed as text
]


@pytest.mark.parametrize("text,expected", CASES)
def test_whole_text_split(text, expected):
    assert ReasoningParser().split(text) == expected


@pytest.mark.parametrize("text,expected", CASES)
def test_any_delta_cut_gives_the_same_split(text, expected):
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 6))))
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        parser = ReasoningParser()
        r = c = ""
        for piece in pieces:
            dr, dc = parser.feed(piece)
            r, c = r + dr, c + dc
        dr, dc = parser.finish()
        assert (r + dr, c + dc) == expected, pieces


def test_prompt_ending_in_think_starts_inside_reasoning(tokenizer):
    s = reasoning_stream(tokenizer, "<|assistant|>\n<think>", None, skip_special_tokens=False)
    assert s.split("because</think>answer", []) == ("because", "answer")


def _engine_like_deltas(tokenizer, ids, skip, holdback=0):
    """What the engine streams: one token per delta, text from the same incremental
    detokenizer, optionally holding back `holdback` characters (stop strings)."""
    detok = IncrementalDetokenizer(tokenizer, None, skip)
    text, emitted, deltas = "", 0, []
    for k, t in enumerate(ids):
        text += detok.push(t)
        last = k == len(ids) - 1
        upto = len(text) if last else max(emitted, len(text) - holdback)
        deltas.append(([t], text[emitted:upto]))
        emitted = upto
    return deltas


@pytest.mark.parametrize("holdback", [0, 3])
def test_special_tags_are_reinserted_at_their_positions(tokenizer, holdback):
    think, end = tokenizer.token_to_id("<think>"), tokenizer.token_to_id("</think>")
    assert think in tokenizer.special_token_id_set, "the tiny tokenizer marks the tags special"
    ids = (
        tokenizer.encode("ab")
        + [think]
        + tokenizer.encode("reason here")
        + [end]
        + tokenizer.encode("final answer")
    )
    assert "<think>" not in tokenizer.decode(ids, skip_special_tokens=True)
    stream = reasoning_stream(tokenizer, "<|assistant|>\n", None, skip_special_tokens=True)
    assert stream.injector is not None
    r = c = ""
    for token_ids, text in _engine_like_deltas(tokenizer, ids, True, holdback):
        dr, dc = stream.feed(text, token_ids)
        r, c = r + dr, c + dc
    dr, dc = stream.finish()
    assert (r + dr, c + dc) == ("reason here", "abfinal answer")


def test_tag_injector_drops_tags_past_a_stop_truncation(tokenizer):
    end = tokenizer.token_to_id("</think>")
    ids = tokenizer.encode("abc") + [end] + tokenizer.encode("def")
    inj = TagInjector(tokenizer, {end: "</think>"}, None, skip_special_tokens=True)
    assert inj.feed(ids[:2], "ab") == "ab"  # text truncated by a stop string before the tag


def test_non_special_tags_need_no_injector(tokenizer):
    stream = reasoning_stream(tokenizer, "x", None, skip_special_tokens=False)
    assert stream.injector is None  # decoded text keeps the tags: the parser alone suffices


@pytest.mark.parametrize("holdback", [0, 3])
@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("<|assistant|>\n", (" answer", "abfinal")),  # </think> with no <think>: dropped
        ("<|assistant|>\n<think>", ("ab", "final answer")),  # the same tokens inside reasoning
    ],
)
def test_stray_special_tags_never_reach_the_text(tokenizer, holdback, prompt, expected):
    """Under skip_special_tokens the tags are put back only to split the text: a tag that
    splits nothing (an end without a start, a second start) is dropped, streamed or not."""
    think, end = tokenizer.token_to_id("<think>"), tokenizer.token_to_id("</think>")
    ids = (
        tokenizer.encode("ab")
        + [end]
        + tokenizer.encode("final")
        + [think]
        + tokenizer.encode(" answer")
    )
    whole = reasoning_stream(tokenizer, prompt, None, skip_special_tokens=True).split(
        tokenizer.decode(ids, skip_special_tokens=True), ids
    )
    stream = reasoning_stream(tokenizer, prompt, None, skip_special_tokens=True)
    r = c = ""
    for token_ids, text in _engine_like_deltas(tokenizer, ids, True, holdback):
        dr, dc = stream.feed(text, token_ids)
        r, c = r + dr, c + dc
    dr, dc = stream.finish()
    assert (r + dr, c + dc) == whole == expected
    for tag in ("<think>", "</think>"):
        assert tag not in r + c
