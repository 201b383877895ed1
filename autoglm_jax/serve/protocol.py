"""The OpenAI wire format: request models (pydantic), OpenAI-shaped errors, response builders.

Requests are validated strictly (a string is not a number, `true` is not 1) and unknown fields
are accepted and ignored, as OpenAI-compatible servers do. Responses are plain dicts built by
the functions below: cheaper than pydantic models per streamed chunk.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# ----------------------------------------------------------------------------------------
# Errors.

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestEntityTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "APIError"),
            "param": param,
            "code": status,
        }
    }


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


_TYPE_SEGMENTS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _clean_loc(loc: tuple[Any, ...]) -> str:
    """('messages', 0, 'content', 'list[...]', 1) -> 'messages[0].content[1]': field names and
    indices only, without pydantic's union-member labels."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in _TYPE_SEGMENTS or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out


def validation_error(e: ValidationError) -> APIError:
    """A pydantic error as a 400 naming the field (the most specific error first)."""
    errors = sorted(e.errors(), key=lambda err: -len(err["loc"]))
    first = errors[0]
    param = _clean_loc(first["loc"]) or None
    messages = []
    for err in errors[:3]:
        where = _clean_loc(err["loc"])
        messages.append(f"{where}: {err['msg']}" if where else err["msg"])
    return bad_request("; ".join(dict.fromkeys(messages)), param)


# ----------------------------------------------------------------------------------------
# Requests.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "observation"]
    # Parts are checked one by one in media.py / app.py, for precise messages.
    content: str | list[Any] | None = None
    name: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class _SamplingFields(_Strict):
    """Fields that chat and completions share (OpenAI's, plus vLLM's extras)."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = 0
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None  # the AutoGLM guides send these two at the top level
    return_reasoning: bool | None = None
    add_generation_prompt: bool = True
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: str | None = None
    add_special_tokens: bool = True


# ----------------------------------------------------------------------------------------
# Responses.


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_message(content: str | None, reasoning: str | None) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content,
        "reasoning": reasoning,
        "reasoning_content": reasoning,
        "tool_calls": [],
    }


def chat_delta(
    *, role: bool = False, content: str | None = None, reasoning: str | None = None
) -> dict[str, Any]:
    """A stream delta with only the fields that carry something (as vLLM's)."""
    d: dict[str, Any] = {}
    if role:
        d["role"] = "assistant"
    if content is not None:
        d["content"] = content
    if reasoning is not None:
        d["reasoning"] = reasoning
        d["reasoning_content"] = reasoning
    return d


def model_card(name: str, root: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "autoglm-jax",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [],
    }
