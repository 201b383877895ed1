"""Chat and text completions: OpenAI requests in, engine requests out, responses and SSE back.

Each HTTP request becomes one `RequestHandle` with a sub-request per choice (n, and each prompt
of a completions batch). Text prompts are rendered and tokenized here, so the prompt length is
checked before anything is queued; prompts with images or audio go to the engine as a chat
dict (see media.py). A client that disconnects, before or during its stream, has its
sub-requests aborted and their KV pages freed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import uuid
from typing import Any, AsyncIterator, Sequence

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from autoglm_jax.engine.sampling import SamplingParams
from autoglm_jax.serve import protocol as proto
from autoglm_jax.serve.config import ServeConfig
from autoglm_jax.serve.engine_thread import EngineThread, RequestHandle, SubRequest
from autoglm_jax.serve.media import (check_modalities, engine_modalities, has_media_parts,
                                     render_messages)
from autoglm_jax.serve.protocol import APIError, bad_request
from autoglm_jax.serve.reasoning import ReasoningStream, reasoning_stream

KEEPALIVE_SECONDS = 15.0
MAX_CHOICES = 256  # sub-requests per HTTP request (n times the number of prompts)
_RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "add_generation_prompt", "tools", "tokenize",
                                       "chat_template", "documents", "template_name"})


class ClientGone(Exception):
    """The client disconnected while we waited for the engine."""


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def _clamp(lp: float) -> float:
    """JSON has no -inf or NaN; vLLM reports -9999 for impossible tokens."""
    return -9999.0 if math.isnan(lp) else max(float(lp), -9999.0)


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _next_event(handle: RequestHandle, watcher: asyncio.Future | None,
                      timeout: float | None = None) -> tuple | None:
    """The handle's next event; None on timeout; ClientGone if the watcher fires first."""
    get = asyncio.ensure_future(handle.queue.get())
    waits = {get} if watcher is None else {get, watcher}
    done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    if watcher is not None and watcher in done:
        raise ClientGone()
    return None


@dataclasses.dataclass
class _Choice:
    """Per-choice streaming state."""

    reasoning: ReasoningStream | None = None
    text_offset: int = 0
    num_tokens: int = 0


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
        self._token_cache: dict[int, tuple[str, list[int]]] = {}

    # ------------------------------------------------------------------------------------
    # Checks shared by both endpoints.

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model")

    def _common_checks(self, req: proto._SamplingFields) -> list[str]:
        if req.stream_options is not None and not req.stream:
            raise bad_request("stream_options can only be set when stream is true",
                              "stream_options")
        if req.logit_bias:
            raise bad_request("logit_bias is not supported by this server", "logit_bias")
        if req.priority != 0 and self.scheduling_policy != "priority":
            raise bad_request("priority needs a server started with --scheduling-policy "
                              "priority", "priority")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(s == "" for s in stop):
            raise bad_request("stop strings must not be empty", "stop")
        for t in req.stop_token_ids or []:
            if not 0 <= t < self.vocab_size:
                raise bad_request(f"stop_token_ids: {t} is not a token id (vocabulary size "
                                  f"{self.vocab_size})", "stop_token_ids")
        if self.tokenizer is None:
            raise APIError(500, "the model has no tokenizer")
        return stop

    def _params(self, req: proto._SamplingFields, stop: list[str], max_tokens: int | None,
                logprobs: int | None, names: dict[str, str]) -> SamplingParams:
        p = SamplingParams(
            n=1, max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=0 if req.top_k is None else req.top_k,
            min_p=0.0 if req.min_p is None else req.min_p,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            stop=stop, stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos,
            logprobs=logprobs, skip_special_tokens=req.skip_special_tokens,
            include_stop_str_in_output=req.include_stop_str_in_output)
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
            raise bad_request(f"This model's maximum context length is {limit} tokens. However, "
                              f"your request has {n_prompt} input tokens (at least one token "
                              "must be left for the completion). Please reduce the length of "
                              "the input.", param)
        if max_tokens is not None and n_prompt + max_tokens > limit:
            raise bad_request(f"This model's maximum context length is {limit} tokens. However, "
                              f"you requested {n_prompt + max_tokens} tokens ({n_prompt} in the "
                              f"input, {max_tokens} in the completion). Please reduce the length "
                              "of the input or of the completion.", "max_tokens")

    def _subs(self, prompts: Sequence[Any], params: SamplingParams, n: int, seed: int | None,
              priority: int) -> list[SubRequest]:
        if len(prompts) * n > MAX_CHOICES:
            raise bad_request(f"{len(prompts)} prompts times n={n} is more than {MAX_CHOICES} "
                              "completions in one request", "n")
        base = uuid.uuid4().hex
        subs = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                s = None if seed is None else (seed + j) % 2**64
                index = i * n + j
                subs.append(SubRequest(index, prompt, dataclasses.replace(params, seed=s),
                                       f"{base}-{index}", priority))
        return subs

    # ------------------------------------------------------------------------------------
    # Waiting for the engine.

    async def _collect(self, request: Request, handle: RequestHandle) -> dict[int, tuple]:
        """All "done" events of a non-streamed request: index -> (last delta, RequestOutput)."""
        watcher = asyncio.ensure_future(_until_disconnect(request))
        results: dict[int, tuple] = {}
        try:
            while not handle.finished:
                ev = await _next_event(handle, watcher)
                if ev[0] == "error":
                    raise ev[2]
                if ev[0] == "done":
                    results[ev[1]] = (ev[2], ev[3])
                    handle.num_done += 1
            return results
        finally:
            watcher.cancel()
            if not handle.finished:
                self.thread.abort(handle)

    async def _first_event(self, request: Request, handle: RequestHandle) -> tuple:
        """Wait for the first event before sending headers, so that a request refused by the
        engine (queue full, waited too long) still gets its status code."""
        watcher = asyncio.ensure_future(_until_disconnect(request))
        try:
            ev = await _next_event(handle, watcher)
            if ev[0] == "error":
                raise ev[2]
            return ev
        except BaseException:
            self.thread.abort(handle)
            raise
        finally:
            watcher.cancel()

    async def _run(self, request: Request, handle: RequestHandle, stream_fn, full_fn) -> Response:
        self.thread.submit(handle)
        try:
            if handle.stream:
                first = await self._first_event(request, handle)
                return self._streaming_response(handle, stream_fn(first))
            return JSONResponse(full_fn(await self._collect(request, handle)))
        except ClientGone:
            return Response(status_code=499)

    async def _events_from(self, handle: RequestHandle, first: tuple) -> AsyncIterator[tuple]:
        """Events from `first` on; None is a keep-alive tick. Ends after the last "done" or
        an "error"."""
        ev = first
        while True:
            yield ev
            if ev is not None and ev[0] == "done":
                handle.num_done += 1
                if handle.finished:
                    return
            if ev is not None and ev[0] == "error":
                return
            ev = await _next_event(handle, None, KEEPALIVE_SECONDS)

    def _streaming_response(self, handle: RequestHandle, body: AsyncIterator[str]) -> Response:
        """SSE response; whatever way the body ends (done, error, client gone: Starlette
        cancels it), unfinished sub-requests are aborted."""
        async def guarded() -> AsyncIterator[str]:
            try:
                async for piece in body:
                    yield piece
            finally:  # abort first: under a cancelled scope every await raises again
                if not handle.finished:
                    self.thread.abort(handle)
                await body.aclose()
        return StreamingResponse(guarded(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------------------------
    # Token strings for logprobs.

    def _token(self, tid: int) -> tuple[str, list[int]]:
        hit = self._token_cache.get(tid)
        if hit is None:
            try:
                raw = self.tokenizer.token_bytes(tid)
            except ValueError:  # not a byte-level tokenizer
                raw = self.tokenizer.decode([tid]).encode("utf-8")
            hit = (raw.decode("utf-8", errors="replace"), list(raw))
            self._token_cache[tid] = hit
        return hit

    def _chat_logprobs(self, token_ids: Sequence[int], chosen: Sequence[float],
                       tops: Sequence[dict[int, float]]) -> list[dict[str, Any]]:
        out = []
        for tid, lp, top in zip(token_ids, chosen, tops):
            s, b = self._token(tid)
            entries = []
            for t, v in top.items():
                ts, tb = self._token(t)
                entries.append({"token": ts, "logprob": _clamp(v), "bytes": tb})
            out.append({"token": s, "logprob": _clamp(lp), "bytes": b, "top_logprobs": entries})
        return out

    def _completion_logprobs(self, token_ids: Sequence[int], chosen: Sequence[float],
                             tops: Sequence[dict[int, float]], state: _Choice) -> dict[str, Any]:
        tokens, offsets, top_out = [], [], []
        for tid, top in zip(token_ids, tops):
            s, _ = self._token(tid)
            tokens.append(s)
            offsets.append(state.text_offset)
            state.text_offset += len(s)
            top_out.append({self._token(t)[0]: _clamp(v) for t, v in top.items()})
        return {"tokens": tokens, "token_logprobs": [_clamp(v) for v in chosen],
                "top_logprobs": top_out, "text_offset": offsets}

    # ------------------------------------------------------------------------------------
    # POST /v1/chat/completions

    async def chat(self, request: Request, req: proto.ChatCompletionRequest) -> Response:
        self.check_model(req.model)
        stop = self._common_checks(req)
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise bad_request(f"response_format {req.response_format.get('type')!r} is not "
                              "supported by this server (only text)", "response_format")
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        if req.tool_choice == "required" or isinstance(req.tool_choice, dict):
            raise bad_request("tool_choice 'required' or a named tool is not supported by this "
                              "server", "tool_choice")
        kwargs = dict(req.chat_template_kwargs or {})
        reserved = sorted(_RESERVED_TEMPLATE_KWARGS & set(kwargs))
        if reserved:
            raise bad_request(f"chat_template_kwargs may not set {reserved}",
                              "chat_template_kwargs")
        enable_thinking = kwargs.pop("enable_thinking", req.enable_thinking)
        if enable_thinking is not None and not isinstance(enable_thinking, bool):
            raise bad_request("enable_thinking must be a boolean",
                              "chat_template_kwargs.enable_thinking")
        thinking = enable_thinking is not False
        return_reasoning = req.return_reasoning is not False

        allowed = self.config.allowed_local_media_path
        if has_media_parts(req.messages):  # decoding images can take a while: off the loop
            messages, media = await anyio.to_thread.run_sync(render_messages, req.messages,
                                                             allowed)
        else:
            messages, media = render_messages(req.messages, allowed)
        check_modalities(media, self.modalities, self.model_name)
        try:
            prompt_text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=req.add_generation_prompt,
                enable_thinking=enable_thinking, tools=req.tools, **kwargs)
        except Exception as e:  # noqa: BLE001 - jinja errors, raise_exception(), bad kwargs
            raise bad_request(f"the chat template failed on these messages: "
                              f"{type(e).__name__}: {e}", "messages") from None
        max_tokens = req.max_completion_tokens or req.max_tokens
        if media:  # the engine expands the placeholders and preprocesses the media
            template_kwargs = dict(kwargs, **({"tools": req.tools} if req.tools else {}))
            prompt: Any = {"messages": messages, "enable_thinking": enable_thinking,
                           "chat_template_kwargs": template_kwargs}
            prompt_ids = None
        else:
            prompt_ids = self.tokenizer.encode(prompt_text, add_special_tokens=False)
            self._check_length(len(prompt_ids), max_tokens, "messages")
            prompt = prompt_ids
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self._params(req, stop, max_tokens, logprobs,
                              {"logprobs": "top_logprobs", "max_tokens": "max_tokens"})
        subs = self._subs([prompt], params, req.n, req.seed, req.priority)
        handle = RequestHandle(subs, asyncio.get_running_loop(), req.stream)

        def splitter() -> ReasoningStream | None:
            if not thinking:
                return None
            return reasoning_stream(self.tokenizer, prompt_text, prompt_ids,
                                    req.skip_special_tokens)

        rid, created = proto.new_id("chatcmpl"), proto.now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def full(results: dict[int, tuple]) -> dict[str, Any]:
            choices = []
            for index in sorted(results):
                _, out = results[index]
                comp = out.outputs[0]
                reasoning, content = None, comp.text
                split = splitter()
                if split is not None:
                    reasoning, content = split.split(comp.text, comp.token_ids)
                    reasoning = (reasoning or None) if return_reasoning else None
                logprobs = None
                if req.logprobs:
                    logprobs = {"content": self._chat_logprobs(comp.token_ids, comp.token_logprobs,
                                                               comp.logprobs)}
                choices.append({"index": index, "message": proto.chat_message(content, reasoning),
                                "logprobs": logprobs, "finish_reason": comp.finish_reason,
                                "stop_reason": comp.stop_reason})
            return {"id": rid, "object": "chat.completion", "created": created,
                    "model": self.model_name, "choices": choices,
                    "usage": _usage([results[i][1] for i in sorted(results)], req.n)}

        async def stream(first: tuple) -> AsyncIterator[str]:
            extra = {"usage": None} if include_usage else {}

            def chunk(index: int, delta: dict, finish: str | None = None,
                      logprobs: Any = None, stop_reason: Any = None) -> str:
                c: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs,
                                     "finish_reason": finish}
                if finish is not None:
                    c["stop_reason"] = stop_reason
                return sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                            "model": self.model_name, "choices": [c], **extra})

            states = {s.index: _Choice(splitter()) for s in subs}
            outs: dict[int, Any] = {}
            for s in subs:
                yield chunk(s.index, proto.chat_delta(role=True, content=""))
            async for ev in self._events_from(handle, first):
                if ev is None:
                    yield ": keep-alive\n\n"
                    continue
                if ev[0] == "error":
                    yield sse(ev[2].body())
                    yield SSE_DONE
                    return
                index, d = ev[1], ev[2]
                final = ev[0] == "done"
                st = states[index]
                reasoning, content = "", d.text
                if st.reasoning is not None:
                    reasoning, content = st.reasoning.feed(d.text, d.token_ids)
                    if final:
                        r2, c2 = st.reasoning.finish()
                        reasoning, content = reasoning + r2, content + c2
                    if not return_reasoning:
                        reasoning = ""
                logprobs = None
                if req.logprobs and d.token_ids:
                    logprobs = {"content": self._chat_logprobs(d.token_ids, d.token_logprobs,
                                                               d.logprobs)}
                delta = proto.chat_delta(content=content or None, reasoning=reasoning or None)
                if final:
                    comp = ev[3].outputs[0]
                    outs[index] = ev[3]
                    yield chunk(index, delta, comp.finish_reason, logprobs, comp.stop_reason)
                elif delta or logprobs:
                    if not delta:
                        delta = {"content": ""}
                    yield chunk(index, delta, logprobs=logprobs)
            if include_usage:
                yield sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                           "model": self.model_name, "choices": [],
                           "usage": _usage([outs[i] for i in sorted(outs)], req.n)})
            yield SSE_DONE

        return await self._run(request, handle, stream, full)

    # ------------------------------------------------------------------------------------
    # POST /v1/completions

    async def completions(self, request: Request, req: proto.CompletionRequest) -> Response:
        self.check_model(req.model)
        stop = self._common_checks(req)
        if req.suffix:
            raise bad_request("suffix is not supported by this server", "suffix")
        if req.echo and req.logprobs is not None:
            raise bad_request("echo with logprobs (prompt logprobs) is not supported by this "
                              "server", "echo")
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
                    raise bad_request(f"{param}: token ids out of range [0, {self.vocab_size}): "
                                      f"{bad[:5]}", param)
                ids = list(p)
                echo = self.tokenizer.decode(ids, skip_special_tokens=req.skip_special_tokens)
            self._check_length(len(ids), req.max_tokens, param)
            prompts.append(ids)
            echoes.append(echo if req.echo else "")
        params = self._params(req, stop, req.max_tokens, req.logprobs, {})
        subs = self._subs(prompts, params, req.n, req.seed, req.priority)
        handle = RequestHandle(subs, asyncio.get_running_loop(), req.stream)
        rid, created = proto.new_id("cmpl"), proto.now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        n = req.n

        def full(results: dict[int, tuple]) -> dict[str, Any]:
            choices = []
            for index in sorted(results):
                _, out = results[index]
                comp = out.outputs[0]
                prefix = echoes[index // n]
                logprobs = None
                if req.logprobs is not None:
                    logprobs = self._completion_logprobs(comp.token_ids, comp.token_logprobs,
                                                         comp.logprobs, _Choice())
                choices.append({"index": index, "text": prefix + comp.text,
                                "logprobs": logprobs, "finish_reason": comp.finish_reason,
                                "stop_reason": comp.stop_reason})
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": self.model_name, "choices": choices,
                    "usage": _usage([results[i][1] for i in sorted(results)], n)}

        async def stream(first: tuple) -> AsyncIterator[str]:
            extra = {"usage": None} if include_usage else {}

            def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None,
                      stop_reason: Any = None) -> str:
                c: dict[str, Any] = {"index": index, "text": text, "logprobs": logprobs,
                                     "finish_reason": finish}
                if finish is not None:
                    c["stop_reason"] = stop_reason
                return sse({"id": rid, "object": "text_completion", "created": created,
                            "model": self.model_name, "choices": [c], **extra})

            states = {s.index: _Choice() for s in subs}
            outs: dict[int, Any] = {}
            if req.echo:
                for s in subs:
                    yield chunk(s.index, echoes[s.index // n])
            async for ev in self._events_from(handle, first):
                if ev is None:
                    yield ": keep-alive\n\n"
                    continue
                if ev[0] == "error":
                    yield sse(ev[2].body())
                    yield SSE_DONE
                    return
                index, d = ev[1], ev[2]
                logprobs = None
                if req.logprobs is not None and d.token_ids:
                    logprobs = self._completion_logprobs(d.token_ids, d.token_logprobs,
                                                         d.logprobs, states[index])
                if ev[0] == "done":
                    comp = ev[3].outputs[0]
                    outs[index] = ev[3]
                    yield chunk(index, d.text, comp.finish_reason, logprobs, comp.stop_reason)
                elif d.text or logprobs:
                    yield chunk(index, d.text, logprobs=logprobs)
            if include_usage:
                yield sse({"id": rid, "object": "text_completion", "created": created,
                           "model": self.model_name, "choices": [],
                           "usage": _usage([outs[i] for i in sorted(outs)], n)})
            yield SSE_DONE

        return await self._run(request, handle, stream, full)


def _usage(outs: Sequence[Any], n: int) -> dict[str, Any]:
    """Prompt tokens once per prompt (not per choice), completion tokens of every choice."""
    firsts = outs[::n]
    return proto.usage(sum(len(o.prompt_token_ids) for o in firsts),
                       sum(len(o.outputs[0].token_ids) for o in outs),
                       sum(o.num_cached_tokens for o in firsts))
