"""The agent loop against a scripted OpenAI-compatible server (stdlib, in a thread) driving a
fake phone: history bounds, stop conditions, unusable replies, the request's sampling fields,
server errors; then one episode against our real server (random weights, so garbage replies)
and the same request body through the openai client."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from autoglm_jax.agent.actions import Action, Back, Finish, Launch, Tap, Type
from autoglm_jax.agent.loop import (
    SYSTEM_PROMPT,
    AgentConfig,
    AgentError,
    Episode,
    Step,
    StopReason,
    Turn,
    build_messages,
    request_body,
    run_episode,
)


class FakePhone:
    """Launch changes the app; every screenshot has a different colour (step number)."""

    def __init__(self) -> None:
        self.applied: list[Action] = []
        self._app = "Home"

    @property
    def current_app(self) -> str:
        return self._app

    def screenshot(self) -> Image.Image:
        return Image.new("RGB", (8, 16), (len(self.applied), 0, 0))

    def apply(self, action: Action) -> str:
        self.applied.append(action)
        if isinstance(action, Launch):
            self._app = action.app
        return f"did {action}"


class FakeServer:
    """Answers POST /v1/chat/completions with the next scripted reply, streamed as SSE when
    asked; a reply that is an (HTTP status, message) pair is sent as an OpenAI error."""

    def __init__(self, replies: list[str | tuple[int, str]]) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                reply = outer.replies.pop(0) if outer.replies else 'finish(message="out")'
                if isinstance(reply, tuple):
                    status, message = reply
                    self._send(
                        status,
                        "application/json",
                        json.dumps(
                            {
                                "error": {
                                    "message": message,
                                    "type": "BadRequestError",
                                    "param": None,
                                    "code": status,
                                }
                            }
                        ).encode(),
                    )
                elif body.get("stream"):
                    self._send(200, "text/event-stream", b"".join(_sse(reply)))
                else:
                    self._send(
                        200,
                        "application/json",
                        json.dumps(
                            {
                                "id": "x",
                                "object": "chat.completion",
                                "choices": [
                                    {
                                        "index": 0,
                                        "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": reply},
                                    }
                                ],
                            }
                        ).encode(),
                    )

            def _send(self, status: int, kind: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _sse(reply: str) -> Iterator[bytes]:
    def event(delta: dict, finish: str | None = None) -> bytes:
        chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    yield b": keep-alive comment\n\n"
    yield event({"role": "assistant", "content": ""})
    for i in range(0, len(reply), 7):  # split mid-token, as servers do
        yield event({"content": reply[i : i + 7]})
    yield event({}, "stop")
    yield b"data: [DONE]\n\n"


@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(replies: list[str | tuple[int, str]]) -> FakeServer:
        servers.append(FakeServer(replies))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _user_turns(request: dict) -> list[list[dict]]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


def _images(parts: list[dict]) -> list[str]:
    return [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]


def _text(parts: list[dict]) -> str:
    (text,) = [p["text"] for p in parts if p["type"] == "text"]
    return text


@pytest.mark.parametrize("stream", [True, False])
def test_runs_to_finish(serve, stream):
    server = serve(
        [
            '<think>Open the settings.</think><answer>do(action="Launch", app="Settings")</answer>',
            'Tap Wi-Fi. do(action="Tap", element=[500, 120])',
            '<think>It is on.</think><answer>finish(message="Wi-Fi is on")</answer>',
            'do(action="Back")',  # never requested
        ]
    )
    phone, seen = FakePhone(), []
    config = AgentConfig(base_url=server.base_url, stream=stream, max_steps=10)
    episode = run_episode(phone, "Turn on Wi-Fi", config, on_step=seen.append)

    assert isinstance(episode, Episode) and episode.finished
    assert episode.stop_reason is StopReason.FINISHED and episode.message == "Wi-Fi is on"
    assert episode.instruction == "Turn on Wi-Fi"
    assert phone.applied == [Launch("Settings"), Tap((500, 120)), Finish("Wi-Fi is on")]
    assert episode.steps[2].result == 'did finish(message="Wi-Fi is on")'
    assert list(episode.steps) == seen and [s.index for s in seen] == [0, 1, 2]
    first = episode.steps[0]
    assert isinstance(first, Step)
    assert first.thinking == "Open the settings." and first.action == Launch("Settings")
    assert first.result == 'did do(action="Launch", app="Settings")' and first.error is None
    assert first.current_app == "Home" and episode.steps[1].current_app == "Settings"
    assert episode.steps[1].thinking == "Tap Wi-Fi."
    assert episode.steps[2].reply.endswith("</answer>")
    assert len(server.requests) == 3

    # the user turn as Open-AutoGLM sends it: image part first, then text with the screen info
    first_turn = _user_turns(server.requests[0])[0]
    assert [p["type"] for p in first_turn] == ["image_url", "text"]
    (url,) = _images(first_turn)
    assert url.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert png.format == "PNG" and png.size == (8, 16)
    assert _text(first_turn) == 'Turn on Wi-Fi\n\n{"current_app": "Home"}'
    second = server.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[0]["content"] == SYSTEM_PROMPT
    assert second[2]["content"] == episode.steps[0].reply  # the raw reply goes back
    assert _text(second[3]["content"]) == '{"current_app": "Settings"}'


def test_request_body_carries_the_configured_sampling(serve):
    server = serve(['finish(message="x")'])
    config = AgentConfig(
        base_url=server.base_url + "/",
        model="phone",
        api_key="sk-abc",
        temperature=0.3,
        top_p=0.5,
        frequency_penalty=0.7,
        max_tokens=123,
        stream=False,
        system_prompt="Be brief.",
    )
    run_episode(FakePhone(), "task", config)
    (body,) = server.requests
    assert {
        k: body[k]
        for k in ("model", "temperature", "top_p", "frequency_penalty", "max_tokens", "stream")
    } == {
        "model": "phone",
        "temperature": 0.3,
        "top_p": 0.5,
        "frequency_penalty": 0.7,
        "max_tokens": 123,
        "stream": False,
    }
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert server.headers[0]["Authorization"] == "Bearer sk-abc"


def test_history_is_bounded(serve):
    server = serve([f'do(action="Type", text="step {i}")' for i in range(7)])
    config = AgentConfig(base_url=server.base_url, max_steps=7, keep_images=2, max_history_turns=3)
    episode = run_episode(FakePhone(), "Write seven notes", config)
    assert episode.stop_reason is StopReason.MAX_STEPS and len(server.requests) == 7

    for step, request in enumerate(server.requests):
        turns = _user_turns(request)
        # the first pair (the task) plus the two most recent, plus the current turn
        assert len(turns) == min(step, 3) + 1
        assert _text(turns[0]).startswith("Write seven notes")
        with_images = [i for i, t in enumerate(turns) if _images(t)]
        assert with_images == list(range(len(turns)))[-2:]  # only the two newest screens
        assert all(len(_images(t)) <= 1 for t in turns)
        replies = [m["content"] for m in request["messages"] if m["role"] == "assistant"]
        expected = [f'do(action="Type", text="step {i}")' for i in range(step)]
        assert replies == (expected if step <= 3 else [expected[0], *expected[-2:]])
    # the screenshots sent are the phone's, newest last
    newest = _images(_user_turns(server.requests[-1])[-1])[0]
    shot = Image.open(io.BytesIO(base64.b64decode(newest.split(",", 1)[1])))
    assert shot.getpixel((0, 0)) == (6, 0, 0)
    assert [s.action for s in episode.steps] == [Type(f"step {i}") for i in range(7)]


def test_no_images_kept_and_one_history_turn():
    image = "data:image/png;base64,AA"
    turns = [Turn(i, f"t{i}", image, f"r{i}") for i in range(4)] + [Turn(4, "now", image)]
    messages = build_messages(turns, AgentConfig(keep_images=0, max_history_turns=1))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == [{"type": "text", "text": "t0"}]
    assert messages[2]["content"] == "r0"
    assert messages[3]["content"] == [{"type": "text", "text": "now"}]
    assert [t.text for t in turns] == ["t0", "now"]  # the rest can never be sent again
    assert all(t.image is None for t in turns)


def test_images_follow_steps_not_window_positions():
    # more images allowed than turns kept: the first turn's screen goes once it is 3 steps old
    image = "data:image/png;base64,AA"
    config = AgentConfig(keep_images=3, max_history_turns=2)
    turns: list[Turn] = []
    carried = []
    for i in range(5):
        turns.append(Turn(i, f"t{i}", image))
        messages = build_messages(turns, config)
        carried.append(
            [_text(m["content"]) for m in messages if m["role"] == "user" and _images(m["content"])]
        )
        turns[-1].reply = f"r{i}"
    assert carried == [["t0"], ["t0", "t1"], ["t0", "t1", "t2"], ["t2", "t3"], ["t3", "t4"]]


def test_unusable_replies_are_recorded_not_fatal(serve):
    server = serve(
        [
            "I am not sure what to do.",
            'do(action="Fly", element=[1, 2])',
            'do(action="Back")',  # resets the count of failures in a row
            'do(action="Tap", element=[2000, 5])',
            "<answer>import os</answer>",
            "",
            'do(action="Home")',  # never requested
        ]
    )
    phone = FakePhone()
    config = AgentConfig(base_url=server.base_url, max_steps=20, max_parse_failures=3)
    episode = run_episode(phone, "anything", config)
    assert episode.stop_reason is StopReason.PARSE_FAILURES and not episode.finished
    assert episode.message is None and len(episode.steps) == 6 and len(server.requests) == 6
    assert phone.applied == [Back()]
    errors = [s.error for s in episode.steps]
    assert errors[2] is None and all(errors[:2]) and all(errors[3:])
    assert "unknown action 'Fly'" in errors[1]
    assert "coordinate 2000 is outside 0..999" in errors[3]
    assert errors[5] == "empty action"
    assert all(
        s.action is None and s.result == f"no action: {s.error}"
        for i, s in enumerate(episode.steps)
        if i != 2
    )
    assert episode.steps[0].reply == "I am not sure what to do."


def test_stops_at_max_steps(serve):
    server = serve(['do(action="Wait", duration="1 seconds")'] * 5)
    phone = FakePhone()
    episode = run_episode(phone, "wait", AgentConfig(base_url=server.base_url, max_steps=3))
    assert episode.stop_reason is StopReason.MAX_STEPS and len(episode.steps) == 3
    assert len(server.requests) == 3 and len(phone.applied) == 3


def test_server_error_names_url_status_and_message(serve):
    server = serve([(400, "prompt is too long: 9000 > 8192 tokens")])
    config = AgentConfig(base_url=server.base_url)
    with pytest.raises(AgentError) as info:
        run_episode(FakePhone(), "x", config)
    message = str(info.value)
    assert f"{server.base_url}/chat/completions" in message
    assert "HTTP 400" in message and "prompt is too long: 9000 > 8192 tokens" in message


def test_unreachable_server_is_an_agent_error(serve):
    server = serve([])
    url = server.base_url
    server.close()
    with pytest.raises(AgentError, match=f"POST {url}/chat/completions failed"):
        run_episode(FakePhone(), "x", AgentConfig(base_url=url, timeout=5))


@pytest.mark.parametrize(
    "field,value", [("max_steps", 0), ("keep_images", -1), ("max_history_turns", 0), ("timeout", 0)]
)
def test_config_rejects_nonsense(field, value):
    with pytest.raises(ValueError, match=field):
        AgentConfig(**{field: value})


def test_request_body_is_what_is_sent():
    config = AgentConfig(stream=False, max_tokens=5)
    body = request_body(config, [{"role": "user", "content": "hi"}])
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["max_tokens"] == 5
    assert json.loads(json.dumps(body)) == body


# -- against our real server ----------------------------------------------------------------


@pytest.mark.slow  # ~25-35 s on a cold compilation cache (2 cores), ~11 s warm
def test_live_server_episode_and_openai_client(tmp_path, request, monkeypatch):
    """`tiny-mm` (random weights, a vision tower) answers garbage: the episode runs all its
    steps with the errors recorded; the last request's body also goes through openai."""
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from autoglm_jax.agent import loop
    from tests.serve.helpers import API_KEY, start_server

    cache = getattr(request.config, "cache", None)  # the serve tests' compilation cache
    xla_cache = str(cache.mkdir("autoglm_serve_xla") if cache else tmp_path / "xla")
    # room for the default system prompt (the tests' usual 256 tokens is too few)
    server = start_server(
        tmp_path / "server",
        xla_cache,
        "--model",
        "tiny-mm",
        "--no-warmup",
        "--max-model-len",
        "1024",
    )
    try:
        sent: list[list[dict]] = []
        real_chat = loop.chat
        monkeypatch.setattr(
            loop,
            "chat",
            lambda config, messages: (sent.append(messages), real_chat(config, messages))[1],
        )
        config = AgentConfig(
            base_url=server.base_url,
            model="tiny-mm",
            api_key=API_KEY,
            max_steps=3,
            max_tokens=6,
            max_parse_failures=10,
            max_history_turns=1,
        )
        episode = run_episode(FakePhone(), "Turn on Wi-Fi", config)
        assert episode.stop_reason is StopReason.MAX_STEPS and len(episode.steps) == 3
        assert all(s.error for s in episode.steps if s.action is None)
        assert (
            len(sent) == 3
            and sum(len(_images(m["content"])) for m in sent[-1] if m["role"] == "user") == 1
        )

        client = openai.OpenAI(
            base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120
        )
        try:
            stream = client.chat.completions.create(**request_body(config, sent[-1]))
            chunks = list(stream)
        finally:
            client.close()
        assert chunks and chunks[-1].choices[0].finish_reason == "length"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == episode.steps[-1].reply  # temperature 0: the same reply again
    finally:
        code = server.stop()
    assert code == 0 and "Traceback" not in server.log(), server.log()[-3000:]
