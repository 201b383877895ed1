"""Chat and text completions, requests in: OpenAI requests checked and turned into engine requests.

Each HTTP request becomes one `RequestHandle` with a sub-request per choice (n, and each prompt
of a completions batch). Text prompts are rendered and tokenized here, so the prompt length is
checked before anything is queued; prompts with images or audio go to the engine as a chat
dict (see media.py). The answer, streamed or whole, is streaming.py's with the endpoint's
renderer (renderers.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from typing import Any, Sequence

import anyio
from starlette.requests import Request
from starlette.responses import Response

from autoglm_jax.engine.sampling import SamplingParams
from autoglm_jax.serve import protocol as proto
from autoglm_jax.serve.config import ServeConfig
from autoglm_jax.serve.engine_thread import EngineThread, RequestHandle, SubRequest
from autoglm_jax.serve.logprobs import TokenText
from autoglm_jax.serve.media import (
    check_modalities,
    engine_modalities,
    has_media_parts,
    render_messages,
)
from autoglm_jax.serve.protocol import APIError, bad_request
from autoglm_jax.serve.reasoning import ReasoningStream, reasoning_stream
from autoglm_jax.serve.renderers import ChatRenderer, CompletionRenderer
from autoglm_jax.serve.streaming import respond

MAX_CHOICES = 256  # sub-requests per HTTP request (n times the number of prompts)
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "messages",
        "add_generation_prompt",
        "tools",
        "tokenize",
        "chat_template",
        "documents",
        "template_name",
    }
)


class OpenAIServing:
    def __init__(self, engine_thread: EngineThread, config: ServeConfig):
        engine = engine_thread.engine
        self.thread = engine_thread
        self.config = config
        self.tokenizer = engine.tokenizer
        self.model_name = config.model_name
        self.max_model_len = engine.config.max_model_len
        self.max_logprobs = engine.config.max_logprobs
        self.scheduling_policy = engine.config.scheduling_policy
        self.vocab_size = engine.model.config.text.vocab_size
        self.modalities = engine_modalities(engine)
        self.tokens = TokenText(engine.tokenizer)

    # ------------------------------------------------------------------------------------
    # Checks shared by both endpoints.

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model")

    def _common_checks(self, req: proto._SamplingFields) -> list[str]:
        if req.stream_options is not None and not req.stream:
            raise bad_request(
                "stream_options can only be set when stream is true", "stream_options"
            )
        if req.logit_bias:
            raise bad_request("logit_bias is not supported by this server", "logit_bias")
        if req.priority != 0 and self.scheduling_policy != "priority":
            raise bad_request(
                "priority needs a server started with --scheduling-policy priority", "priority"
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(s == "" for s in stop):
            raise bad_request("stop strings must not be empty", "stop")
        for t in req.stop_token_ids or []:
            if not 0 <= t < self.vocab_size:
                raise bad_request(
                    f"stop_token_ids: {t} is not a token id (vocabulary size {self.vocab_size})",
                    "stop_token_ids",
                )
        if self.tokenizer is None:
            raise APIError(500, "the model has no tokenizer")
        return stop

    def _params(
        self,
        req: proto._SamplingFields,
        stop: list[str],
        max_tokens: int | None,
        logprobs: int | None,
        names: dict[str, str],
    ) -> SamplingParams:
        p = SamplingParams(
            n=1,
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=0 if req.top_k is None else req.top_k,
            min_p=0.0 if req.min_p is None else req.min_p,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            stop=stop,
            stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens,
            include_stop_str_in_output=req.include_stop_str_in_output,
        )
        try:
            p.validate(self.max_logprobs)
        except ValueError as e:
            m = re.match(r"SamplingParams\.(\w+): (.*)", str(e))
            if m is None:
                raise bad_request(str(e)) from None
            param = names.get(m.group(1), m.group(1))
            raise bad_request(f"{param}: {m.group(2)}", param) from None
        return p

    def _check_length(self, n_prompt: int, max_tokens: int | None, param: str) -> None:
        limit = self.max_model_len
        if n_prompt == 0:
            raise bad_request("the prompt is empty", param)
        if n_prompt >= limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, "
                f"your request has {n_prompt} input tokens (at least one token "
                "must be left for the completion). Please reduce the length of "
                "the input.",
                param,
            )
        if max_tokens is not None and n_prompt + max_tokens > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, "
                f"you requested {n_prompt + max_tokens} tokens ({n_prompt} in the "
                f"input, {max_tokens} in the completion). Please reduce the length "
                "of the input or of the completion.",
                "max_tokens",
            )

    def _subs(
        self,
        prompts: Sequence[Any],
        params: SamplingParams,
        n: int,
        seed: int | None,
        priority: int,
    ) -> list[SubRequest]:
        if len(prompts) * n > MAX_CHOICES:
            raise bad_request(
                f"{len(prompts)} prompts times n={n} is more than {MAX_CHOICES} "
                "completions in one request",
                "n",
            )
        base = uuid.uuid4().hex
        subs = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                s = None if seed is None else (seed + j) % 2**64
                index = i * n + j
                subs.append(
                    SubRequest(
                        index,
                        prompt,
                        dataclasses.replace(params, seed=s),
                        f"{base}-{index}",
                        priority,
                    )
                )
        return subs

    # ------------------------------------------------------------------------------------
    # POST /v1/chat/completions

    async def chat(self, request: Request, req: proto.ChatCompletionRequest) -> Response:
        self.check_model(req.model)
        stop = self._common_checks(req)
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise bad_request(
                f"response_format {req.response_format.get('type')!r} is not "
                "supported by this server (only text)",
                "response_format",
            )
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        if req.tool_choice == "required" or isinstance(req.tool_choice, dict):
            raise bad_request(
                "tool_choice 'required' or a named tool is not supported by this server",
                "tool_choice",
            )
        kwargs = dict(req.chat_template_kwargs or {})
        reserved = sorted(_RESERVED_TEMPLATE_KWARGS & set(kwargs))
        if reserved:
            raise bad_request(
                f"chat_template_kwargs may not set {reserved}", "chat_template_kwargs"
            )
        enable_thinking = kwargs.pop("enable_thinking", req.enable_thinking)
        if enable_thinking is not None and not isinstance(enable_thinking, bool):
            raise bad_request(
                "enable_thinking must be a boolean", "chat_template_kwargs.enable_thinking"
            )
        thinking = enable_thinking is not False
        return_reasoning = req.return_reasoning is not False

        allowed = self.config.allowed_local_media_path
        if has_media_parts(req.messages):  # decoding images can take a while: off the loop
            messages, content = await anyio.to_thread.run_sync(
                render_messages, req.messages, allowed
            )
        else:
            messages, content = render_messages(req.messages, allowed)
        check_modalities(content, self.modalities, self.model_name)
        try:
            prompt_text = self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=req.add_generation_prompt,
                enable_thinking=enable_thinking,
                tools=req.tools,
                **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - jinja errors, raise_exception(), bad kwargs
            raise bad_request(
                f"the chat template failed on these messages: {type(e).__name__}: {e}", "messages"
            ) from None
        max_tokens = req.max_completion_tokens or req.max_tokens
        if content.media:  # the engine expands the placeholders and preprocesses the media
            template_kwargs = dict(kwargs, **({"tools": req.tools} if req.tools else {}))
            prompt: Any = {
                "messages": messages,
                "enable_thinking": enable_thinking,
                "chat_template_kwargs": template_kwargs,
            }
            prompt_ids = None
        else:
            prompt_ids = self.tokenizer.encode(prompt_text, add_special_tokens=False)
            self._check_length(len(prompt_ids), max_tokens, "messages")
            prompt = prompt_ids
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self._params(
            req,
            stop,
            max_tokens,
            logprobs,
            {"logprobs": "top_logprobs", "max_tokens": "max_tokens"},
        )
        subs = self._subs([prompt], params, req.n, req.seed, req.priority)
        handle = RequestHandle(subs, asyncio.get_running_loop(), req.stream)

        def splitter() -> ReasoningStream | None:
            if not thinking:
                return None
            return reasoning_stream(
                self.tokenizer, prompt_text, prompt_ids, req.skip_special_tokens
            )

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        renderer = ChatRenderer(
            self.model_name,
            req.n,
            include_usage,
            self.tokens,
            splitter=splitter,
            return_reasoning=return_reasoning,
            logprobs=bool(req.logprobs),
        )
        return await respond(request, self.thread, handle, renderer)

    # ------------------------------------------------------------------------------------
    # POST /v1/completions

    async def completions(self, request: Request, req: proto.CompletionRequest) -> Response:
        self.check_model(req.model)
        stop = self._common_checks(req)
        if req.suffix:
            raise bad_request("suffix is not supported by this server", "suffix")
        if req.echo and req.logprobs is not None:
            raise bad_request(
                "echo with logprobs (prompt logprobs) is not supported by this server", "echo"
            )
        raw = req.prompt
        if isinstance(raw, str) or (raw and all(isinstance(t, int) for t in raw)):
            raw = [raw]
        if not raw:
            raise bad_request("prompt must not be empty", "prompt")
        prompts: list[list[int]] = []
        echoes: list[str] = []
        for i, p in enumerate(raw):
            param = "prompt" if len(raw) == 1 else f"prompt[{i}]"
            if isinstance(p, str):
                ids = self.tokenizer.encode(p, add_special_tokens=req.add_special_tokens)
                echo = p
            else:
                bad = [t for t in p if not 0 <= t < self.vocab_size]
                if bad:
                    raise bad_request(
                        f"{param}: token ids out of range [0, {self.vocab_size}): {bad[:5]}", param
                    )
                ids = list(p)
                echo = self.tokenizer.decode(ids, skip_special_tokens=req.skip_special_tokens)
            self._check_length(len(ids), req.max_tokens, param)
            prompts.append(ids)
            echoes.append(echo)
        params = self._params(req, stop, req.max_tokens, req.logprobs, {})
        subs = self._subs(prompts, params, req.n, req.seed, req.priority)
        handle = RequestHandle(subs, asyncio.get_running_loop(), req.stream)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        renderer = CompletionRenderer(
            self.model_name,
            req.n,
            include_usage,
            self.tokens,
            echoes=echoes if req.echo else None,
            logprobs=req.logprobs is not None,
        )
        return await respond(request, self.thread, handle, renderer)
