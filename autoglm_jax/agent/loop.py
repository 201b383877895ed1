"""The agent loop: screenshot -> model -> action -> phone, through any OpenAI-compatible server.

It talks to the server the way the public Open-AutoGLM client does (see SERVING_FACTS.md):
one user turn per step with a PNG data URI and a JSON screen-info string, the task only in the
first turn, images stripped from older turns, only `content` read from the reply, which is
split by `split_reply` and read by `parse_action`. HTTP is the standard library's, so the
library needs no client package.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import http.client
import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .actions import Action, ActionError, Finish, parse_action, split_reply

if TYPE_CHECKING:
    from PIL import Image

SYSTEM_PROMPT = """\
You operate an Android phone to complete the user's task. Each turn shows a screenshot and \
the current app. Think briefly, then answer with exactly one action:
<think>your reasoning</think><answer>action</answer>
Actions:
do(action="Launch", app="Settings")
do(action="Tap", element=[x, y])
do(action="Long Press", element=[x, y])
do(action="Type", text="...")  (types into the focused field)
do(action="Swipe", start=[x1, y1], end=[x2, y2])
do(action="Back")
do(action="Home")
do(action="Wait", duration="2 seconds")
finish(message="...")  (the task is done; the message answers the user)
x and y are relative: 0 is the left/top edge of the screen, 999 the right/bottom edge."""

# What a model trained from scratch on the simulator is trained with: the same actions and reply
# format, learnt from examples instead of read from a manual (the full prompt is three quarters
# of a training record's tokens for the small model, and carries nothing it can use).
COMPACT_SYSTEM_PROMPT = "Operate the phone. One action a turn: <answer>action</answer>"

# A model directory may carry the system prompt it was trained with under this name; the agent
# commands use it unless told otherwise (see infer/agent.py).
SYSTEM_PROMPT_FILE = "agent_system_prompt.txt"


class AgentError(RuntimeError):
    """The server could not be reached or refused a request (not the model's fault)."""


class Phone(Protocol):
    """What the loop drives: a real device, an emulator or a simulated phone."""

    @property
    def current_app(self) -> str: ...

    def screenshot(self) -> Image.Image: ...

    def apply(self, action: Action) -> str:
        """Performs an action (Finish included, so the phone can record the answer); returns a
        one-line result. Failures are described in the line, not raised: a tap on nothing is
        the model's mistake, not the phone's."""
        ...


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "autoglm-phone-9b"
    api_key: str = "EMPTY"
    max_steps: int = 20
    # Sampling as the Open-AutoGLM client sends it.
    temperature: float = 0.0
    top_p: float = 0.85
    frequency_penalty: float = 0.2
    max_tokens: int = 3000
    # Screenshots kept in a request, the current one included; older user turns keep only
    # their text (the reference client keeps one). Bounds image tokens per request.
    keep_images: int = 1
    # Earlier (user, assistant) pairs sent with each request. The first pair is always among
    # them: the task is written only in the first user turn.
    max_history_turns: int = 8
    max_parse_failures: int = 3  # consecutive unusable replies before giving up
    timeout: float = 120.0  # seconds per request
    stream: bool = True
    system_prompt: str = SYSTEM_PROMPT

    def __post_init__(self):
        for name, low in (
            ("max_steps", 1),
            ("max_tokens", 1),
            ("keep_images", 0),
            ("max_history_turns", 1),
            ("max_parse_failures", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"AgentConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise ValueError(f"AgentConfig.timeout must be positive, got {self.timeout}")

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


class StopReason(enum.Enum):
    FINISHED = "finished"  # the model called finish(...)
    MAX_STEPS = "max_steps"
    PARSE_FAILURES = "parse_failures"  # max_parse_failures unusable replies in a row


@dataclasses.dataclass(frozen=True)
class Step:
    index: int  # 0-based
    screenshot: Image.Image  # the screen the model saw
    current_app: str
    reply: str  # the model's raw content
    thinking: str
    action: Action | None  # None when the reply did not parse
    error: str | None  # why the reply did not parse
    result: str  # the phone's result line, or what happened instead


@dataclasses.dataclass(frozen=True)
class Episode:
    instruction: str
    steps: tuple[Step, ...]
    stop_reason: StopReason
    message: str | None  # finish(message=...) when finished

    @property
    def finished(self) -> bool:
        return self.stop_reason is StopReason.FINISHED


# --- messages ------------------------------------------------------------------------------


def png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def screen_info(current_app: str) -> str:
    return json.dumps({"current_app": current_app}, ensure_ascii=False)


@dataclasses.dataclass
class Turn:
    """One step's exchange as the loop keeps it (mutable: the reply and dropped image)."""

    index: int  # the step
    text: str
    image: str | None  # data URI; dropped once no request can carry it again
    reply: str | None = None  # the assistant's answer to this turn


def _user_message(turn: Turn, with_image: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if with_image and turn.image is not None:
        parts.append({"type": "image_url", "image_url": {"url": turn.image}})
    parts.append({"type": "text", "text": turn.text})
    return {"role": "user", "content": parts}


def build_messages(turns: list[Turn], config: AgentConfig) -> list[dict[str, Any]]:
    """The request's messages for the last turn of `turns` (the current one, no reply yet):
    system prompt, the first pair, the most recent max_history_turns - 1 pairs, the current
    turn; images only on turns of the keep_images most recent steps. Forgets turns and images
    no later request can carry, so memory stays bounded however long the episode."""
    current = turns[-1]
    past = turns[:-1]
    recent = past[1:][-(config.max_history_turns - 1) :] if config.max_history_turns > 1 else []
    window = [*past[:1], *recent, current]
    del turns[:]
    turns.extend(window)
    for t in window:
        if t.index <= current.index - config.keep_images:
            t.image = None
    messages: list[dict[str, Any]] = [{"role": "system", "content": config.system_prompt}]
    for t in window:
        messages.append(_user_message(t, t.image is not None))
        if t.reply is not None:
            messages.append({"role": "assistant", "content": t.reply})
    return messages


def request_body(config: AgentConfig, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON body of one chat completion request (also valid kwargs for the openai client's
    `chat.completions.create`)."""
    return {
        "model": config.model,
        "messages": messages,
        "stream": config.stream,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "frequency_penalty": config.frequency_penalty,
        "max_tokens": config.max_tokens,
    }


# --- HTTP ----------------------------------------------------------------------------------


def _server_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeError):
        return raw.decode("utf-8", "replace").strip()[:500]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return json.dumps(body)[:500]


def _sse_content(lines: Iterable[bytes], url: str) -> str:
    """The concatenated choices[0].delta.content of a chat completion event stream."""
    pieces: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data:"):
            continue  # blank separators, comments, event:/id: fields
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return "".join(pieces)
        event = json.loads(payload)
        if "error" in event:
            raise AgentError(
                f"POST {url}: the stream reported an error: {_server_message(payload.encode())}"
            )
        for choice in event.get("choices") or []:
            if choice.get("index", 0) == 0:
                pieces.append((choice.get("delta") or {}).get("content") or "")
    raise AgentError(f"POST {url}: the stream ended before [DONE]")


def chat(config: AgentConfig, messages: list[dict[str, Any]]) -> str:
    """The content of the server's reply to `messages` (streamed or not, per config)."""
    url = config.chat_url
    data = json.dumps(request_body(config, messages)).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {config.api_key}",
            "Accept": "text/event-stream" if config.stream else "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout) as response:
            if config.stream:
                return _sse_content(response, url)
            body = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise AgentError(
            f"POST {url} failed with HTTP {e.code}: {_server_message(e.read())}"
        ) from None
    except urllib.error.URLError as e:
        raise AgentError(f"POST {url} failed: {e.reason}") from None
    except TimeoutError:
        raise AgentError(f"POST {url} timed out after {config.timeout} s") from None
    except (OSError, http.client.HTTPException) as e:  # dropped connections mid-response
        raise AgentError(f"POST {url} failed: {type(e).__name__}: {e}") from None
    except (ValueError, UnicodeError) as e:  # JSONDecodeError is a ValueError
        raise AgentError(f"POST {url}: the response is not valid JSON ({e})") from None
    try:
        return body["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise AgentError(f"POST {url}: no choices[0].message in {json.dumps(body)[:300]}") from None


# --- the loop ------------------------------------------------------------------------------


Backend = Callable[[list[dict[str, Any]]], str]
"""What answers the loop: the request's messages -> the reply's content (HTTP, or in-process)."""


def turn_text(instruction: str, index: int, current_app: str) -> str:
    """The text of step `index`'s user turn: the task on the first turn only, then screen info."""
    info = screen_info(current_app)
    return f"{instruction}\n\n{info}" if index == 0 else info


def _steps(phone: Phone, instruction: str, config: AgentConfig, send: Backend) -> Iterator[Step]:
    turns: list[Turn] = []
    for index in range(config.max_steps):
        screen = phone.screenshot()
        app = phone.current_app
        turns.append(Turn(index, turn_text(instruction, index, app), png_data_uri(screen)))
        reply = send(build_messages(turns, config))
        turns[-1].reply = reply
        thinking, action_text = split_reply(reply)
        try:
            action = parse_action(action_text)
        except ActionError as e:
            yield Step(index, screen, app, reply, thinking, None, str(e), f"no action: {e}")
            continue
        yield Step(index, screen, app, reply, thinking, action, None, phone.apply(action))


def run_episode(
    phone: Phone,
    instruction: str,
    config: AgentConfig,
    on_step: Callable[[Step], None] | None = None,
    backend: Backend | None = None,
) -> Episode:
    """Drives `phone` towards `instruction` until the model finishes, max_steps pass, or
    max_parse_failures replies in a row do not parse. Model output never raises; AgentError
    means the server failed. `on_step` sees each step as it is recorded. `backend` answers the
    requests (default: `chat` over HTTP to config.base_url; `local.EngineBackend` runs an
    engine in-process); the sampling fields of `config` are the backend's to honour."""
    send = backend if backend is not None else (lambda m: chat(config, m))
    steps: list[Step] = []
    failures = 0
    for step in _steps(phone, instruction, config, send):
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if isinstance(step.action, Finish):
            return Episode(instruction, tuple(steps), StopReason.FINISHED, step.action.message)
        failures = failures + 1 if step.action is None else 0
        if failures >= config.max_parse_failures:
            return Episode(instruction, tuple(steps), StopReason.PARSE_FAILURES, None)
    return Episode(instruction, tuple(steps), StopReason.MAX_STEPS, None)
