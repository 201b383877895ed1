"""The host-side scheduler: waiting and running queues, token budget, chunked prefill,
prefix-cache admission and preemption by recompute.

Each step it decides how many tokens of which requests run, vLLM-style: running requests first
(decodes before prefill chunks), then new admissions, all under `max_num_batched_tokens` and
`max_num_seqs`. When pages run out it preempts the lowest-priority, latest request (its pages
are freed and it is recomputed later, usually largely from the prefix cache).

Under async scheduling a request's last output token may still be on the device: it is
`PENDING` in `output_token_ids` (`num_pending` of them, at the end) and counts as a token to
compute, so the next step can feed it back; pages holding it are hashed only once it is back.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any, Callable

from autoglm_jax.engine.pages import PageAllocator, hash_page
from autoglm_jax.engine.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


PENDING = -1  # an output token sampled on the device and not fetched yet


class QueueFullError(RuntimeError):
    """The waiting queue is at its limit (the server answers 429)."""


@dataclasses.dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    arrival_time: float
    priority: int = 0
    extra_hash: bytes = b""  # image/audio content keys for prefix caching
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    status: Status = Status.WAITING
    num_computed_tokens: int = 0
    pages: list[int] = dataclasses.field(default_factory=list)
    page_hashes: list[bytes] = dataclasses.field(default_factory=list)
    num_registered_pages: int = 0
    slot: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    num_preemptions: int = 0
    first_token_time: float | None = None
    admitted: bool = False
    mm: Any = None  # MultimodalInputs (engine.multimodal) or None
    max_output_tokens: int | None = None  # never scheduled to sample past this many outputs

    @property
    def num_pending(self) -> int:
        """Output tokens still on the device: the trailing PENDING entries."""
        n, out = 0, self.output_token_ids
        while n < len(out) and out[-1 - n] == PENDING:
            n += 1
        return n

    @property
    def known_output_ids(self) -> list[int]:
        """The output tokens back on the host (without the pending ones)."""
        return self.output_token_ids[: len(self.output_token_ids) - self.num_pending]

    def drop_pending(self) -> None:
        """Forget samples still on the device (the request finished before they came back)."""
        del self.output_token_ids[len(self.output_token_ids) - self.num_pending :]

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def in_decode(self) -> bool:
        return self.num_computed_tokens >= self.num_tokens - 1 and bool(self.output_token_ids)


@dataclasses.dataclass
class ScheduledChunk:
    request: Request
    start: int  # first token position computed this step
    num_tokens: int
    reset_penalties: bool  # first chunk after (re)admission: clear the slot's penalty rows

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the known tokens (so a token is sampled)."""
        return self.start + self.num_tokens == self.request.num_tokens


@dataclasses.dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk]
    preempted: list[Request]
    timed_out: list[Request]

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    def __init__(
        self,
        allocator: PageAllocator,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        policy: str = "fcfs",
        enable_chunked_prefill: bool = True,
        max_waiting: int | None = None,
        max_queue_wait: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {policy!r}")
        self.pages = allocator
        self.page_size = allocator.page_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.policy = policy
        self.enable_chunked_prefill = enable_chunked_prefill
        self.max_waiting = max_waiting
        self.max_queue_wait = max_queue_wait
        self.clock = clock
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self._free_slots = list(range(max_num_seqs - 1, -1, -1))
        self.num_preemptions = 0

    # Queue management.
    def _key(self, r: Request) -> tuple:
        return (r.priority, r.arrival_time) if self.policy == "priority" else (r.arrival_time,)

    def add(self, request: Request) -> None:
        if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
            raise QueueFullError(f"waiting queue is full ({self.max_waiting} requests)")
        self.waiting.append(request)

    def finish(self, request: Request, reason: str, error: str | None = None) -> None:
        """End a request in any state and release everything it holds."""
        if request.status is Status.FINISHED:
            return
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        self._release(request)
        request.status = Status.FINISHED
        request.finish_reason = reason
        request.error = error

    def _release(self, request: Request) -> None:
        if request.pages:
            self.pages.free(request.pages)
        request.pages = []
        request.num_registered_pages = 0
        if request.slot is not None:
            self._free_slots.append(request.slot)
            request.slot = None

    def preempt(self, request: Request) -> None:
        self.running.remove(request)
        self._release(request)
        request.num_computed_tokens = 0
        request.status = Status.WAITING
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(request)

    # Pages.
    def _pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def _grow(self, request: Request, num_tokens: int) -> bool:
        need = self._pages_for(num_tokens) - len(request.pages)
        if need <= 0:
            return True
        new = self.pages.allocate(need)
        if new is None:
            return False
        request.pages.extend(new)
        return True

    def _hashes(self, request: Request, upto_tokens: int) -> list[bytes]:
        """Page hashes of the request's full pages among its first `upto_tokens` tokens (a
        page holding a pending token is not hashed yet)."""
        tokens = request.all_token_ids
        full = min(upto_tokens, len(tokens) - request.num_pending) // self.page_size
        while len(request.page_hashes) < full:
            i = len(request.page_hashes)
            parent = request.page_hashes[-1] if i else None
            chunk = tokens[i * self.page_size : (i + 1) * self.page_size]
            request.page_hashes.append(hash_page(parent, chunk, request.extra_hash))
        return request.page_hashes[:full]

    def register_computed_pages(self, request: Request) -> None:
        """Offer the request's newly completed pages to the prefix cache."""
        hashes = self._hashes(request, request.num_computed_tokens)
        for i in range(request.num_registered_pages, len(hashes)):
            self.pages.register(request.pages[i], hashes[i])
        request.num_registered_pages = max(request.num_registered_pages, len(hashes))

    # The step.
    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        timed_out = self._expire_waiting()

        # Running requests: decodes first, then prefill chunks, in policy order.
        order = sorted(self.running, key=lambda r: (not r.in_decode, self._key(r)))
        scheduled: set[int] = set()
        for request in order:
            if budget <= 0:
                break
            if request.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            if n <= 0 or _at_output_limit(request):
                continue  # nothing to compute, or its last sample is still on the device
            while not self._grow(request, request.num_computed_tokens + n):
                victim = max(
                    (r for r in self.running if id(r) not in scheduled), key=self._key, default=None
                )
                if victim is None:
                    break
                self.preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            if request.status is not Status.RUNNING:
                continue
            if self._pages_for(request.num_computed_tokens + n) > len(request.pages):
                continue  # nothing left to preempt; try again next step
            chunks.append(ScheduledChunk(request, request.num_computed_tokens, n, False))
            scheduled.add(id(request))
            budget -= n

        # Admissions, unless something was preempted this step (no pages to spare).
        if not preempted:
            self.waiting.sort(key=self._key)
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                request = self.waiting[0]
                chunk = self._admit(request, budget)
                if chunk is None:
                    break
                self.waiting.pop(0)
                chunks.append(chunk)
                budget -= chunk.num_tokens
        return SchedulerOutput(chunks, preempted, timed_out)

    def _admit(self, request: Request, budget: int) -> ScheduledChunk | None:
        if request.num_pending:  # preempted this step; its sample comes back after it
            raise RuntimeError(f"{request.request_id} was admitted with a token still pending")
        tokens = request.num_tokens
        # Never take the last token from the cache: its logits are needed.
        hashes = self._hashes(request, tokens - 1)
        hits_before = (self.pages.prefix_hits, self.pages.prefix_queries)
        cached = self.pages.lookup(hashes)
        start = len(cached) * self.page_size
        n = min(tokens - start, budget)
        if not self.enable_chunked_prefill and n < tokens - start:
            self.pages.free(cached)
            self.pages.prefix_hits, self.pages.prefix_queries = hits_before
            return None
        need = self._pages_for(start + n) - len(cached)
        if need > self.pages.num_free:
            self.pages.free(cached)
            self.pages.prefix_hits, self.pages.prefix_queries = hits_before
            return None
        request.pages = cached + (self.pages.allocate(need) or [])
        request.num_registered_pages = len(cached)
        request.num_computed_tokens = start
        if not request.admitted:
            request.num_cached_tokens = start
            request.admitted = True
        request.status = Status.RUNNING
        request.slot = self._free_slots.pop()
        self.running.append(request)
        return ScheduledChunk(request, start, n, True)

    def _expire_waiting(self) -> list[Request]:
        if self.max_queue_wait is None:
            return []
        now = self.clock()
        expired = [
            r for r in self.waiting if not r.admitted and now - r.arrival_time > self.max_queue_wait
        ]
        for r in expired:
            self.finish(
                r,
                "abort",
                f"request waited longer than max_queue_wait={self.max_queue_wait}s in the queue",
            )
        return expired

    @property
    def held_pages(self) -> list[list[int]]:
        return [r.pages for r in self.running if r.pages]


def _at_output_limit(request: Request) -> bool:
    limit = request.max_output_tokens
    return limit is not None and len(request.output_token_ids) >= limit
