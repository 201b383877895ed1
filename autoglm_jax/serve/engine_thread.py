"""The one thread that owns the engine.

HTTP handlers (on the asyncio loop) hand it `RequestHandle`s through a bounded command queue
and read events from the handle's asyncio queue; the thread adds the requests, steps the engine
while anything is unfinished, and posts each step's events back with one
`loop.call_soon_threadsafe` per step. Aborts (client gone) bypass the bound so they are never
dropped. A request the engine's full waiting queue refuses is retried after the next step
(a burst arrives faster than the scheduler admits); refused again, it gets a 429 event. An
exception inside the engine marks it dead: every request gets a 503 event and `/health`
answers 503.

Events on `RequestHandle.queue` are the typed `DeltaEvent`, `DoneEvent` and `ErrorEvent` of
events.py; streaming.py reads them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Sequence

from autoglm_jax.engine.engine import Engine
from autoglm_jax.engine.sampling import SamplingParams
from autoglm_jax.engine.scheduler import QueueFullError
from autoglm_jax.serve.events import DeltaEvent, DoneEvent, EngineEvent, ErrorEvent
from autoglm_jax.serve.metrics import ServerMetrics
from autoglm_jax.serve.protocol import APIError

log = logging.getLogger("autoglm_jax.serve")

RETRY_AFTER_SECONDS = 1


def _too_many(message: str) -> APIError:
    return APIError(429, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@dataclasses.dataclass(eq=False)
class SubRequest:
    """One engine request: a choice (n > 1 and prompt lists make several per HTTP request)."""

    index: int
    prompt: Any  # token ids, or a chat dict for the engine to render (multimodal)
    params: SamplingParams
    request_id: str
    priority: int = 0
    # Filled in by the engine thread.
    first_token_time: float | None = None
    num_tokens: int = 0


class RequestHandle:
    """One HTTP request: its sub-requests and the asyncio queue their events arrive on."""

    def __init__(self, subs: Sequence[SubRequest], loop: asyncio.AbstractEventLoop, stream: bool):
        self.subs = list(subs)
        self.loop = loop
        self.stream = stream
        self.queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.arrival = time.monotonic()
        self.num_done = 0  # counted on the loop side as "done" events are read
        self.num_added = 0  # sub-requests the engine has accepted (engine thread only)

    @property
    def finished(self) -> bool:
        return self.num_done >= len(self.subs)


class EngineThread:
    """Owns `engine`; see the module docstring. `start()` blocks until warm and ready."""

    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics | None = None,
        *,
        max_pending: int = 4096,
        warmup: bool = True,
        warmup_image_sizes: Sequence[tuple[int, int]] = (),
    ):
        """warmup_image_sizes: (height, width) of images whose vision tower warm-up compiles."""
        self.engine = engine
        self.metrics = metrics
        self.max_pending = max_pending
        self.do_warmup = warmup
        self.warmup_image_sizes = list(warmup_image_sizes)
        self._cv = threading.Condition()
        self._commands: collections.deque[tuple[str, Any]] = collections.deque()
        self._pending_adds = 0
        self._live: dict[str, tuple[RequestHandle, SubRequest]] = {}
        self._deferred: list[RequestHandle] = []  # waiting queue was full; retried per step
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, EngineEvent]]] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._failure: BaseException | None = None
        self.dead_reason: str | None = None
        self.stats: dict[str, Any] = {}
        self._baseline: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------
    # Called from other threads.

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"engine failed to start: {self._failure}") from self._failure

    @property
    def alive(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._ready.is_set()
            and self.dead_reason is None
            and not self._stopping
        )

    def submit(self, handle: RequestHandle) -> None:
        """Queue a request; raises APIError 503 when the engine is down, 429 when the command
        queue is full."""
        if not self.alive:
            raise APIError(503, f"the engine is not running ({self.dead_reason or 'stopped'})")
        with self._cv:
            if self._pending_adds >= self.max_pending:
                if self.metrics:
                    self.metrics.request_rejected("server_queue_full")
                raise _too_many(
                    f"the server is busy ({self.max_pending} requests are waiting "
                    "to reach the engine); retry later"
                )
            self._pending_adds += 1
            self._commands.append(("add", handle))
            self._cv.notify()

    def abort(self, handle: RequestHandle) -> None:
        """Abort what is left of `handle` (client gone). Never blocks, never refused."""
        with self._cv:
            self._commands.append(("abort", handle))
            self._cv.notify()

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Abort everything in flight (their handles get a 503 event) and stop the thread."""
        with self._cv:
            self._commands.append(("stop", None))
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------
    # The thread.

    def _run(self) -> None:
        try:
            if self.do_warmup:
                t0 = time.monotonic()

                def progress(k: int, n: int, bucket: int, seconds: float) -> None:
                    log.info(
                        "compiling: step shape %d of %d (%d tokens), %.1f s", k, n, bucket, seconds
                    )

                n = self.engine.warmup(progress=progress, image_sizes=self.warmup_image_sizes)
                log.info(
                    "warm-up: %d programs compiled or read from the cache in %.1f s",
                    n,
                    time.monotonic() - t0,
                )
            self._baseline = self.engine.stats()
            self._snapshot()
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._failure = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except Exception as e:  # an engine bug: fail everything, report dead
            log.exception("engine thread died")
            self.dead_reason = f"engine error: {type(e).__name__}: {e}"
        finally:
            self._fail_all(APIError(503, self.dead_reason or "the server is shutting down"))
            self._flush()
            self._snapshot()

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._cv:
                if not self._commands and not self._deferred and not engine.has_unfinished():
                    self._cv.wait(timeout=1.0)
                commands = list(self._commands)
                self._commands.clear()
            for kind, arg in commands:
                if kind == "add":
                    with self._cv:
                        self._pending_adds -= 1
                    if not self._add(arg, may_defer=True):
                        self._deferred.append(arg)
                elif kind == "abort":
                    if arg in self._deferred:
                        self._deferred.remove(arg)
                    self._abort(arg)
                elif kind == "stop":
                    self._stopping = True
            if self._stopping:
                return
            if engine.has_unfinished():
                steps = engine.num_steps
                deltas = engine.step()
                self._on_deltas(deltas)
                if not deltas and engine.num_steps == steps and not self._deferred:
                    # Nothing could be scheduled (e.g. waiting for pages): do not spin.
                    with self._cv:
                        if not self._commands:
                            self._cv.wait(timeout=0.005)
            self._retry_deferred()
            self._flush()
            self._snapshot()

    def _retry_deferred(self) -> None:
        """A burst fills the waiting queue before the scheduler has run once, and a request
        with n choices may need more waiting places than there are: retry after each step
        while the step made room for at least one more sub-request; when it made none, the
        queue is really full behind busy slots: 429."""
        still = []
        for handle in self._deferred:
            before = handle.num_added
            if self._add(handle, may_defer=True):
                continue
            if handle.num_added > before:
                still.append(handle)
            else:
                self._add(handle, may_defer=False)
        self._deferred = still

    def _post(self, handle: RequestHandle, event: EngineEvent) -> None:
        self._outbox.setdefault(handle.loop, []).append((handle, event))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _snapshot(self) -> None:
        s = self.engine.stats()
        for k in ("prefix_cache_queries", "prefix_cache_hits"):
            s[k] -= self._baseline.get(k, 0)
        s["prefix_cache_hit_rate"] = (
            s["prefix_cache_hits"] / s["prefix_cache_queries"] if s["prefix_cache_queries"] else 0.0
        )
        s["pending"] = self._pending_adds
        s["live_requests"] = len(self._live)
        self.stats = s

    def _add(self, handle: RequestHandle, may_defer: bool) -> bool:
        """Hand the handle's remaining sub-requests to the engine. False: the waiting queue
        filled up and `may_defer` (those added stay; retry the rest after a step). On any
        other failure every sub-request is dropped and the client gets the error."""
        try:
            while handle.num_added < len(handle.subs):
                sub = handle.subs[handle.num_added]
                self.engine.add_request(
                    sub.prompt,
                    sub.params,
                    sub.request_id,
                    sub.priority,
                    arrival_time=handle.arrival,
                )
                self._live[sub.request_id] = (handle, sub)
                handle.num_added += 1
        except Exception as e:  # noqa: BLE001 - every failure goes back to the client
            if isinstance(e, QueueFullError) and may_defer:
                return False
            for sub in handle.subs[: handle.num_added]:
                if sub.request_id in self._live:
                    self._drop(sub.request_id)
            if isinstance(e, QueueFullError):
                if self.metrics:
                    self.metrics.request_rejected("queue_full")
                error = _too_many(f"the waiting queue is full ({e}); retry later")
            elif isinstance(e, ValueError):
                error = APIError(400, str(e))
            else:
                log.exception("add_request failed")
                error = APIError(
                    500, f"internal error while queueing the request: {type(e).__name__}"
                )
            self._post(handle, ErrorEvent(None, error))
        return True

    def _drop(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self.engine.release(request_id)
        self._live.pop(request_id, None)

    def _abort(self, handle: RequestHandle) -> None:
        for sub in handle.subs:
            if sub.request_id in self._live:
                self._drop(sub.request_id)
                self._record(handle, sub, "abort", None)

    def _fail_all(self, error: APIError) -> None:
        handles = {id(h): h for h, _ in self._live.values()}
        for rid in list(self._live):
            try:
                self._drop(rid)
            except Exception:  # noqa: BLE001 - the engine may be broken; we are failing anyway
                self._live.pop(rid, None)
        with self._cv:
            for kind, arg in self._commands:
                if kind == "add":
                    handles[id(arg)] = arg
            self._commands.clear()
            self._pending_adds = 0
        for h in self._deferred:
            handles[id(h)] = h
        self._deferred = []
        for h in handles.values():
            self._post(h, ErrorEvent(None, error))

    def _on_deltas(self, deltas: Sequence[Any]) -> None:
        now = time.monotonic()
        for d in deltas:
            entry = self._live.get(d.request_id)
            if entry is None:
                continue
            handle, sub = entry
            if d.token_ids:
                sub.first_token_time = sub.first_token_time or now
                sub.num_tokens += len(d.token_ids)
            if not d.finished:
                if handle.stream:
                    self._post(handle, DeltaEvent(sub.index, d))
                continue
            out = self.engine.output(d.request_id)
            self.engine.release(d.request_id)
            del self._live[d.request_id]
            if d.finish_reason == "abort":
                if self.metrics:
                    self.metrics.request_rejected("queue_timeout")
                self._record(handle, sub, "abort", out)
                error = (
                    _too_many(f"{d.error}; retry later")
                    if d.error
                    else APIError(503, "the request was aborted")
                )
                self._post(handle, ErrorEvent(sub.index, error))
            else:
                self._record(handle, sub, d.finish_reason or "stop", out)
                self._post(handle, DoneEvent(sub.index, d, out))

    def _record(self, handle: RequestHandle, sub: SubRequest, reason: str, out: Any) -> None:
        if self.metrics is None:
            return
        now = time.monotonic()
        ttft = sub.first_token_time - handle.arrival if sub.first_token_time else None
        tpot = (
            (now - sub.first_token_time) / (sub.num_tokens - 1)
            if sub.first_token_time and sub.num_tokens > 1
            else None
        )
        prompt = len(out.prompt_token_ids) if out is not None else 0
        self.metrics.request_finished(
            reason, prompt, sub.num_tokens, ttft, tpot, now - handle.arrival
        )


def _deliver(items: list[tuple[RequestHandle, EngineEvent]]) -> None:
    for handle, event in items:
        handle.queue.put_nowait(event)
