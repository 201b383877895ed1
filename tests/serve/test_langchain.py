"""LangChain's ChatOpenAI as the AutoGLM guides set it up: streaming, with the guides'
`enable_thinking` / `return_reasoning` in extra_body. invoke, stream and astream."""

from __future__ import annotations

import asyncio

import pytest

from .helpers import API_KEY, MODEL, chat_prompt_tokens

langchain_openai = pytest.importorskip("langchain_openai")

QUESTION = "Open the settings app."


@pytest.fixture(scope="module")
def llm(server):
    return langchain_openai.ChatOpenAI(
        model=MODEL,
        base_url=server.base_url,
        api_key=API_KEY,
        streaming=True,
        stream_usage=True,
        max_tokens=8,
        max_retries=0,
        timeout=60,
        extra_body={"enable_thinking": True, "return_reasoning": True, "ignore_eos": True},
    )


def test_invoke(llm, tokenizer):
    msg = llm.invoke(QUESTION)
    assert isinstance(msg.content, str)
    usage = msg.usage_metadata
    assert usage["output_tokens"] == 8
    assert usage["input_tokens"] == chat_prompt_tokens(
        tokenizer, [{"role": "user", "content": QUESTION}], enable_thinking=True
    )


def test_stream(llm):
    chunks = list(llm.stream([("system", "You operate a phone."), ("human", QUESTION)]))
    assert len(chunks) >= 2
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert isinstance(total.content, str)
    assert total.usage_metadata["output_tokens"] == 8
    assert total.response_metadata.get("finish_reason") == "length"


def test_astream(llm):
    async def run():
        pieces, usage = [], None
        async for c in llm.astream(QUESTION):
            pieces.append(c.content)
            usage = c.usage_metadata or usage
        return pieces, usage

    pieces, usage = asyncio.run(run())
    assert all(isinstance(p, str) for p in pieces)
    assert usage["output_tokens"] == 8


def test_invoke_without_streaming_and_thinking_off(server):
    llm = langchain_openai.ChatOpenAI(
        model=MODEL,
        base_url=server.base_url,
        api_key=API_KEY,
        max_tokens=4,
        max_retries=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True},
    )
    msg = llm.invoke(QUESTION)
    assert isinstance(msg.content, str) and msg.usage_metadata["output_tokens"] == 4
