"""The engine thread and the app over a scripted fake engine (pure Python, no compilation):
event order, aborts, the queue-full deferral, what clients see once the engine dies, and the
reasoning split end to end (tags as special tokens, streamed and whole)."""

from __future__ import annotations

import asyncio
import types

import httpx
import pytest

from autoglm_jax.engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from autoglm_jax.engine.sampling import SamplingParams
from autoglm_jax.engine.scheduler import QueueFullError
from autoglm_jax.processing.detokenizer import IncrementalDetokenizer
from autoglm_jax.serve.app import create_app
from autoglm_jax.serve.config import ServeConfig
from autoglm_jax.serve.engine_thread import EngineThread, RequestHandle, SubRequest

from .helpers import is_openai_error, parse_sse


class FakeEngine:
    """Each step gives every running request one token (id 65 + i); `max_waiting` requests
    may wait beyond `max_running`; `explode` makes the next step raise."""

    def __init__(self, tokenizer, max_running=2, max_waiting=1, script=None):
        self.tokenizer = tokenizer
        self.script = script  # token ids every request generates, decoded like the engine
        self.config = types.SimpleNamespace(
            max_model_len=512, max_logprobs=5, scheduling_policy="fcfs"
        )
        self.model = types.SimpleNamespace(
            config=types.SimpleNamespace(text=types.SimpleNamespace(vocab_size=523))
        )
        self.max_running, self.max_waiting = max_running, max_waiting
        self.waiting, self.running, self.reqs = [], [], {}
        self.num_steps = 0
        self.explode = False
        self.explode_at_step: int | None = None
        self.aborted = []

    def add_request(self, prompt, params, request_id, priority=0, arrival_time=None):
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(self.waiting) >= self.max_waiting:
            raise QueueFullError(f"waiting queue is full ({self.max_waiting} requests)")
        detok = IncrementalDetokenizer(self.tokenizer, None, params.skip_special_tokens)
        self.reqs[request_id] = {
            "prompt": list(prompt),
            "params": params,
            "out": [],
            "finished": None,
            "detok": detok,
            "text": "",
        }
        self.waiting.append(request_id)
        return request_id

    def has_unfinished(self):
        return bool(self.waiting or self.running)

    def step(self):
        if self.explode or self.num_steps == self.explode_at_step:
            raise RuntimeError("device on fire")
        while self.waiting and len(self.running) < self.max_running:
            self.running.append(self.waiting.pop(0))
        deltas = []
        for rid in list(self.running):
            r = self.reqs[rid]
            k = len(r["out"])
            token = self.script[k] if self.script else 65 + k % 26  # "A".."Z", then again
            r["out"].append(token)
            piece = r["detok"].push(token)
            r["text"] += piece
            limit = r["params"].max_tokens
            if self.script:
                limit = min(limit, len(self.script))
            done = len(r["out"]) >= limit
            if done:
                r["finished"] = "length"
                self.running.remove(rid)
            deltas.append(StreamDelta(rid, piece, [token], done, r["finished"]))
        self.num_steps += 1
        return deltas

    def abort(self, rid):
        r = self.reqs.get(rid)
        if r is None or r["finished"]:
            return False
        r["finished"] = "abort"
        self.aborted.append(rid)
        for q in (self.waiting, self.running):
            if rid in q:
                q.remove(rid)
        return True

    def output(self, rid):
        r = self.reqs[rid]
        return RequestOutput(
            rid, r["prompt"], [CompletionOutput(0, r["text"], r["out"], r["finished"])], True
        )

    def release(self, rid):
        if self.reqs.get(rid, {}).get("finished"):
            del self.reqs[rid]

    def stats(self):
        return {
            "compilations": 0,
            "num_pages": 10,
            "free_pages": 10,
            "kv_cache_usage": 0.0,
            "prefix_cache_hit_rate": 0.0,
            "prefix_cache_queries": 0,
            "prefix_cache_hits": 0,
            "num_waiting": len(self.waiting),
            "num_running": len(self.running),
            "num_preemptions": 0,
        }


def _handle(loop, n_subs, max_tokens, stream=True, tag="r"):
    params = SamplingParams(max_tokens=max_tokens)
    subs = [SubRequest(i, [1, 2, 3], params, f"{tag}-{i}") for i in range(n_subs)]
    return RequestHandle(subs, loop, stream)


async def _events(handle, until_done=True):
    out = []
    while True:
        ev = await asyncio.wait_for(handle.queue.get(), 10)
        out.append(ev)
        if ev[0] == "error" or (
            until_done and sum(e[0] == "done" for e in out) == len(handle.subs)
        ):
            return out


@pytest.fixture
def thread(tokenizer):
    t = EngineThread(FakeEngine(tokenizer), warmup=False)
    t.start()
    yield t
    t.shutdown(5)


def test_events_arrive_in_order_and_requests_are_released(thread):
    async def run():
        h = _handle(asyncio.get_running_loop(), 2, 3)
        thread.submit(h)
        return await _events(h)

    events = asyncio.run(run())
    for index in (0, 1):
        mine = [e for e in events if e[1] == index]
        assert [e[0] for e in mine] == ["delta", "delta", "done"]
        assert mine[-1][3].outputs[0].text == "ABC"
    assert thread.engine.reqs == {}, "finished requests must be released"


def test_abort_reaches_the_engine(thread):
    async def run():
        # endless: it must still be running when the abort arrives, however long the
        # event loop waits for the GIL
        h = _handle(asyncio.get_running_loop(), 1, 10**9)
        thread.submit(h)
        await asyncio.wait_for(h.queue.get(), 10)
        thread.abort(h)
        for _ in range(100):
            if thread.engine.aborted:
                return
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert thread.engine.aborted == ["r-0"] and thread.engine.reqs == {}


def test_waiting_queue_full_after_a_step_is_refused_with_429(tokenizer):
    thread = EngineThread(FakeEngine(tokenizer, max_running=1, max_waiting=1), warmup=False)
    thread.start()

    async def run():
        loop = asyncio.get_running_loop()
        hs = [_handle(loop, 1, 50, tag=f"h{i}") for i in range(3)]
        for h in hs:
            thread.submit(h)
        return [await _events(h) for h in hs]

    try:
        first, second, third = asyncio.run(run())
    finally:
        thread.shutdown(5)
    assert first[-1][0] == second[-1][0] == "done"  # one ran, one waited its turn
    ((kind, _, error),) = third
    assert kind == "error" and error.status == 429 and error.headers["Retry-After"] == "1"


def test_more_choices_than_waiting_places_get_in_over_several_steps(tokenizer):
    # n=3 against one waiting place: the sub-requests are accepted one step at a time
    # instead of the whole request being refused.
    thread = EngineThread(FakeEngine(tokenizer, max_running=4, max_waiting=1), warmup=False)
    thread.start()

    async def run():
        h = _handle(asyncio.get_running_loop(), 3, 4)
        thread.submit(h)
        return await _events(h)

    try:
        events = asyncio.run(run())
    finally:
        thread.shutdown(5)
    assert sorted(e[1] for e in events if e[0] == "done") == [0, 1, 2]
    assert all(e[0] != "error" for e in events)


def test_engine_failure_fails_requests_and_health(tokenizer):
    engine = FakeEngine(tokenizer)
    thread = EngineThread(engine, warmup=False)
    thread.start()
    app = create_app(thread, ServeConfig(served_model_name="fake"))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/health")).status_code == 200
            ok = await http.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "AB"
            engine.explode = True
            dead = await http.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            health = await http.get("/health")
            after = await http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            return dead, health, after

    try:
        dead, health, after = asyncio.run(run())
    finally:
        thread.shutdown(5)
    assert dead.status_code == 503 and is_openai_error(dead.json(), 503)
    assert "device on fire" in dead.json()["error"]["message"]
    assert health.status_code == 503
    assert after.status_code == 503 and is_openai_error(after.json(), 503)
    assert not thread.alive


def test_failure_mid_stream_is_an_error_event_then_done(tokenizer):
    engine = FakeEngine(tokenizer)
    thread = EngineThread(engine, warmup=False)
    thread.start()
    app = create_app(thread, ServeConfig(served_model_name="fake"))
    engine.explode_at_step = 3  # three steps stream a token each, the fourth fails

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 50,
                    "stream": True,
                },
            )

    try:
        r = asyncio.run(run())
    finally:
        thread.shutdown(5)
    assert r.status_code == 200
    events, done = parse_sse(r.text.splitlines())
    assert done
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "ABC"
    assert is_openai_error(events[-1], 503) and "device on fire" in events[-1]["error"]["message"]


def _app_over(engine):
    thread = EngineThread(engine, warmup=False)
    thread.start()
    return thread, create_app(thread, ServeConfig(served_model_name="fake"))


async def _post(app, body):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize(
    "extra,reasoning,content",
    [
        ({"enable_thinking": True, "return_reasoning": True}, "plan it", "x<answer>go</answer>"),
        ({}, "plan it", "x<answer>go</answer>"),  # GLM-4.1V thinks by default
        ({"enable_thinking": True, "return_reasoning": False}, None, "x<answer>go</answer>"),
        ({"chat_template_kwargs": {"enable_thinking": False}}, None, "xplan it<answer>go</answer>"),
    ],
)
def test_reasoning_split_whole_and_streamed(tokenizer, extra, reasoning, content):
    """The engine yields `x<think>plan it</think><answer>go</answer>` with the tags as special
    tokens (dropped from the text): the split must find them anyway."""
    think, end = tokenizer.token_to_id("<think>"), tokenizer.token_to_id("</think>")
    script = (
        tokenizer.encode("x")
        + [think]
        + tokenizer.encode("plan it")
        + [end]
        + tokenizer.encode("<answer>go</answer>")
    )
    thread, app = _app_over(FakeEngine(tokenizer, script=script))
    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 100, **extra}
    try:
        whole = asyncio.run(_post(app, body)).json()
        streamed = asyncio.run(_post(app, {**body, "stream": True}))
    finally:
        thread.shutdown(5)
    message = whole["choices"][0]["message"]
    assert (message["reasoning"], message["reasoning_content"]) == (reasoning, reasoning)
    assert message["content"] == content
    events, done = parse_sse(streamed.text.splitlines())
    assert done
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("content", "") for d in deltas) == content
    assert "".join(d.get("reasoning", "") for d in deltas) == (reasoning or "")
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)


def test_warmup_image_sizes_reach_the_engine_and_need_a_vision_tower(tokenizer):
    engine = FakeEngine(tokenizer)
    warmed = []
    engine.warmup = lambda progress=None, workers=0, image_sizes=(): warmed.append(image_sizes)
    config = ServeConfig(served_model_name="fake", warmup_image_sizes=("84x56",))
    with pytest.raises(ValueError, match="--warmup-image-sizes: this model has no vision"):
        create_app(engine, config)

    thread = EngineThread(engine, warmup=True, warmup_image_sizes=config.image_sizes())
    thread.start()
    thread.shutdown(5)
    assert warmed == [[(56, 84)]]  # (height, width)
