"""Engine events to HTTP responses: one event loop and one SSE loop for every endpoint.

A handler submits a `RequestHandle` and calls `respond` with a `Renderer`: the endpoint's own
shapes (chat's delta and message, completions' text) and nothing else. Everything about
consuming events is here, once: waiting with a disconnect watch, keep-alive ticks, the SSE
framing, finish reasons, the usage chunk, errors. A streamed request's first event is awaited
before the headers go out, so a request the engine refuses (queue full, waited too long) still
gets its status code; later errors arrive as an error chunk, then [DONE]. A client that
disconnects, before or during its stream, has its sub-requests aborted and their KV pages freed.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import json
from typing import Any, AsyncIterator, ClassVar, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from autoglm_jax.engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from autoglm_jax.serve import protocol as proto
from autoglm_jax.serve.engine_thread import EngineThread, RequestHandle
from autoglm_jax.serve.events import DoneEvent, EngineEvent, ErrorEvent

KEEPALIVE_SECONDS = 15.0
SSE_DONE = "data: [DONE]\n\n"
SSE_KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: proxies see traffic, clients ignore it


class ClientGone(Exception):
    """The client disconnected while we waited for the engine."""


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def usage(outputs: Sequence[RequestOutput], n: int) -> dict[str, Any]:
    """Prompt tokens once per prompt (not per choice), completion tokens of every choice;
    `outputs` in choice order, `n` choices per prompt."""
    firsts = outputs[::n]
    return proto.usage(
        sum(len(o.prompt_token_ids) for o in firsts),
        sum(len(o.outputs[0].token_ids) for o in outputs),
        sum(o.num_cached_tokens for o in firsts),
    )


@dataclasses.dataclass(frozen=True)
class ChoicePart:
    """One choice's endpoint fields in a chunk or response (`{"delta": ...}`, `{"text": ...}`,
    `{"message": ...}`) and its logprobs in the endpoint's format (None: not asked for)."""

    fields: dict[str, Any]
    logprobs: Any = None


class Renderer(abc.ABC):
    """One request's response shapes. Subclasses (renderers.py) say what a choice's fields
    are; the envelope, finish reasons and usage are the same for every endpoint."""

    object: ClassVar[str]  # of a whole response
    chunk_object: ClassVar[str]  # of a streamed chunk
    id_prefix: ClassVar[str]

    def __init__(self, model: str, n: int, include_usage: bool):
        self.id, self.created = proto.new_id(self.id_prefix), proto.now()
        self.model = model
        self.n = n  # choices per prompt, for usage
        self.include_usage = include_usage

    def opening(self, index: int) -> ChoicePart | None:
        """The chunk sent for each choice before any event (chat's role, an echo)."""
        return None

    @abc.abstractmethod
    def piece(self, index: int, delta: StreamDelta, final: bool) -> ChoicePart | None:
        """The chunk for one event of choice `index`, or None when it says nothing; never
        None when `final` (the finish reason goes out with it)."""

    @abc.abstractmethod
    def whole(self, index: int, completion: CompletionOutput) -> ChoicePart:
        """Choice `index` of a whole (non-streamed) response."""

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(
        self, index: int, part: ChoicePart, finish: str | None = None, stop_reason: Any = None
    ) -> str:
        c = {"index": index, **part.fields, "logprobs": part.logprobs, "finish_reason": finish}
        if finish is not None:
            c["stop_reason"] = stop_reason
        extra = {"usage": None} if self.include_usage else {}
        return sse({**self._head(self.chunk_object), "choices": [c], **extra})

    def usage_chunk(self, outputs: dict[int, RequestOutput]) -> str:
        return sse(
            {
                **self._head(self.chunk_object),
                "choices": [],
                "usage": usage([outputs[i] for i in sorted(outputs)], self.n),
            }
        )

    def response(self, outputs: dict[int, RequestOutput]) -> dict[str, Any]:
        choices = []
        for index in sorted(outputs):
            comp = outputs[index].outputs[0]
            part = self.whole(index, comp)
            choices.append(
                {
                    "index": index,
                    **part.fields,
                    "logprobs": part.logprobs,
                    "finish_reason": comp.finish_reason,
                    "stop_reason": comp.stop_reason,
                }
            )
        return {
            **self._head(self.object),
            "choices": choices,
            "usage": usage([outputs[i] for i in sorted(outputs)], self.n),
        }


async def stream_chunks(
    events: AsyncIterator[EngineEvent | None], renderer: Renderer, indices: Sequence[int]
) -> AsyncIterator[str]:
    """The SSE body of a streamed request: an opening chunk per choice, a chunk per event
    that says something, the finish reason with each choice's last, then usage and [DONE].
    An error event ends it with an error chunk and [DONE]; None events are keep-alives."""
    for index in indices:
        part = renderer.opening(index)
        if part is not None:
            yield renderer.chunk(index, part)
    outputs: dict[int, RequestOutput] = {}
    async for ev in events:
        if ev is None:
            yield SSE_KEEPALIVE
        elif isinstance(ev, ErrorEvent):
            yield sse(ev.error.body())
            yield SSE_DONE
            return
        elif isinstance(ev, DoneEvent):
            outputs[ev.index] = ev.output
            comp = ev.output.outputs[0]
            part = renderer.piece(ev.index, ev.delta, final=True)
            yield renderer.chunk(ev.index, part, comp.finish_reason, comp.stop_reason)
        else:
            part = renderer.piece(ev.index, ev.delta, final=False)
            if part is not None:
                yield renderer.chunk(ev.index, part)
    if renderer.include_usage:
        yield renderer.usage_chunk(outputs)
    yield SSE_DONE


# ----------------------------------------------------------------------------------------
# Reading a handle's events.


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _next_event(
    handle: RequestHandle, watcher: asyncio.Future | None, timeout: float | None = None
) -> EngineEvent | None:
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


async def engine_events(
    handle: RequestHandle,
    *,
    first: EngineEvent | None = None,
    watcher: asyncio.Future | None = None,
    keepalive: float | None = None,
) -> AsyncIterator[EngineEvent | None]:
    """The handle's events (from `first`, if already read) until its last DoneEvent or an
    ErrorEvent, counting done choices on the handle. None: `keepalive` seconds passed
    without one. ClientGone: the watcher (a disconnect) fired first."""
    ev = first if first is not None else await _next_event(handle, watcher, keepalive)
    while True:
        yield ev
        if isinstance(ev, ErrorEvent):
            return
        if isinstance(ev, DoneEvent):
            handle.num_done += 1
            if handle.finished:
                return
        ev = await _next_event(handle, watcher, keepalive)


async def _collect(
    request: Request, thread: EngineThread, handle: RequestHandle
) -> dict[int, RequestOutput]:
    """Every choice's output of a whole request: index -> RequestOutput."""
    watcher = asyncio.ensure_future(_until_disconnect(request))
    outputs: dict[int, RequestOutput] = {}
    try:
        async with contextlib.aclosing(engine_events(handle, watcher=watcher)) as events:
            async for ev in events:
                if isinstance(ev, ErrorEvent):
                    raise ev.error
                if isinstance(ev, DoneEvent):
                    outputs[ev.index] = ev.output
        return outputs
    finally:
        watcher.cancel()
        if not handle.finished:
            thread.abort(handle)


async def _first_event(
    request: Request, thread: EngineThread, handle: RequestHandle
) -> EngineEvent:
    """Wait for the first event before sending headers (see the module docstring)."""
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        ev = await _next_event(handle, watcher)
        if isinstance(ev, ErrorEvent):
            raise ev.error
        return ev
    except BaseException:
        thread.abort(handle)
        raise
    finally:
        watcher.cancel()


def _sse_response(
    thread: EngineThread, handle: RequestHandle, body: AsyncIterator[str]
) -> Response:
    """SSE response; whatever way the body ends (done, error, client gone: Starlette
    cancels it), unfinished sub-requests are aborted."""

    async def guarded() -> AsyncIterator[str]:
        try:
            async for piece in body:
                yield piece
        finally:  # abort first: under a cancelled scope every await raises again
            if not handle.finished:
                thread.abort(handle)
            await body.aclose()

    return StreamingResponse(
        guarded(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def respond(
    request: Request, thread: EngineThread, handle: RequestHandle, renderer: Renderer
) -> Response:
    """Submit `handle` and answer: SSE when it streams, one JSON response otherwise; 499
    when the client left before anything was sent."""
    thread.submit(handle)
    try:
        if handle.stream:
            first = await _first_event(request, thread, handle)
            events = engine_events(handle, first=first, keepalive=KEEPALIVE_SECONDS)
            chunks = stream_chunks(events, renderer, [s.index for s in handle.subs])
            return _sse_response(thread, handle, chunks)
        return JSONResponse(renderer.response(await _collect(request, thread, handle)))
    except ClientGone:
        return Response(status_code=499)
