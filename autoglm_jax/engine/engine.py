"""`ag.Engine`: continuous batching over the scheduler and the jitted runner.

    engine = ag.Engine(model, ag.EngineConfig(max_num_seqs=64, page_size=16))
    outs = engine.generate(["Hello", [1, 2, 3]], ag.SamplingParams(max_tokens=32, temperature=0))
    for delta in engine.stream("Hi", ag.SamplingParams(max_tokens=8)): print(delta.text, end="")

The engine is single-threaded: `add_request`, `step`, `abort` are called from one thread (the
server runs it in its own engine thread).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.engine.config import DEFAULT_MAX_MODEL_LEN, EngineConfig
from autoglm_jax.engine.multimodal import EncoderCache, MultimodalInputs
from autoglm_jax.engine.outputs import RequestOutput, StreamDelta
from autoglm_jax.engine.pages import PageAllocator
from autoglm_jax.engine.prompts import Prompt, prepare_prompt
from autoglm_jax.engine.runner import ModelRunner
from autoglm_jax.engine.sampling import SamplingArrays, SamplingParams
from autoglm_jax.engine.scheduler import (
    PENDING,
    QueueFullError,
    Request,
    ScheduledChunk,
    Scheduler,
    Status,
)
from autoglm_jax.engine.step_plan import describe
from autoglm_jax.engine.tracks import Track
from autoglm_jax.families import family_of
from autoglm_jax.nn.layers import dtype_of
from autoglm_jax.nn.model import memory_pool


@dataclasses.dataclass(frozen=True)
class _InFlight:
    """A dispatched step whose samples are not back on the host yet."""

    arrays: tuple[jax.Array, ...]  # the runner's outputs: tokens i32[S], logprob arrays
    rows: dict[Request, tuple[int, int]]  # sampling request -> (row, index of its output)
    logprobs: bool  # some request asked for logprobs: fetch them too


class Engine:
    def __init__(self, model: Any, config: EngineConfig | None = None, mesh: Any = None):
        config = config or EngineConfig()
        config.validate()
        text = model.config.text
        family = family_of(model.config)
        if config.max_model_len is None:
            config = dataclasses.replace(
                config, max_model_len=min(text.max_position_embeddings, DEFAULT_MAX_MODEL_LEN)
            )
            config.validate()
        self.config = config
        self.model = model
        self.tokenizer = model.tokenizer
        self.mesh = mesh if mesh is not None else getattr(model, "mesh", None)
        # "auto" is the model's compute dtype, except bf16 on CPU: XLA:CPU widens bf16
        # scatters over the whole page pool (docs/kernels.md), so CPU keeps float32 pages.
        auto = text.dtype if jax.default_backend() != "cpu" else "float32"
        kv_dtype = {"auto": auto}.get(config.kv_cache_dtype, config.kv_cache_dtype)
        self.kv_dtype = jnp.dtype(kv_dtype)
        pages_per_seq = -(-config.max_model_len // config.page_size)
        itemsize = self.kv_dtype.itemsize + (4 / text.head_dim if kv_dtype == "int8" else 0)
        self.kv_bytes_per_token = int(
            2 * text.num_layers * text.num_kv_heads * text.head_dim * itemsize
        )
        num_pages = config.num_pages or min(
            config.max_num_seqs * pages_per_seq + 1,
            max(2, config.kv_cache_memory_bytes // (self.kv_bytes_per_token * config.page_size)),
        )
        impl = config.attention_backend
        if impl == "auto":
            impl = "pallas" if jax.default_backend() == "gpu" else "xla"
        self.allocator = PageAllocator(num_pages, config.page_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.allocator,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=config.max_model_len,
            policy=config.scheduling_policy,
            enable_chunked_prefill=config.enable_chunked_prefill,
            max_waiting=config.max_waiting_requests,
            max_queue_wait=config.max_queue_wait,
        )
        self.runner = ModelRunner(
            model.module,
            model.params,
            num_layers=text.num_layers,
            num_kv_heads=text.num_kv_heads,
            head_dim=text.head_dim,
            vocab_size=text.vocab_size,
            num_pages=num_pages,
            page_size=config.page_size,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_pages_per_seq=pages_per_seq,
            kv_dtype=self.kv_dtype,
            attention_impl=impl,
            max_logprobs=config.max_logprobs,
            mesh=self.mesh,
            mrope=text.mrope_section is not None,
            multimodal=family.multimodal,
            image_rows=(text.d_model, dtype_of(text.dtype)) if family.multimodal else None,
            memory=(
                memory_pool(model.config, model.params, config.max_num_seqs)
                if family.multimodal and getattr(model.config, "audio", None) is not None
                else None
            ),
        )
        self.attention_impl = impl
        self.encoders = None
        if family.multimodal:
            self.encoders = EncoderCache(model.module, model.params, model.config)
        eos = self.tokenizer.stop_token_ids if self.tokenizer is not None else text.eos_token_ids
        self.eos_token_ids = frozenset(int(i) for i in eos)
        self._tracks: dict[str, Track] = {}
        self._rng = np.random.default_rng(config.seed)
        self._counter = itertools.count()
        self.num_generated_tokens = 0
        self.num_steps = 0
        self._compilations_at_warmup = 0
        self._in_flight: collections.deque[_InFlight] = collections.deque()

    def warmup(
        self,
        progress: Callable[[int, int, int, float], None] | None = None,
        workers: int = 0,
        image_sizes: Sequence[tuple[int, int]] = (),
    ) -> int:
        """Compile every program a request can meet, before the first request: the mixed and
        decode steps, which image prompts share (`runner.step_shapes`; `workers` compiles at
        a time, 0: one per core), the penalty priming, the audio memory of every window
        count and its write and reset in the CGA memory pool, and the vision tower for a
        request with one image of each (height, width) in `image_sizes` (other image sizes
        compile the tower when first met). `progress(k, n, bucket,
        seconds)` reports each step shape. Returns the compilations done; with the
        persistent compilation cache on, a restart reads them from disk."""
        if self.has_unfinished():
            raise RuntimeError("warmup() runs before any request is added")
        if image_sizes and getattr(self.model.config, "vision", None) is None:
            raise ValueError(
                f"warmup(image_sizes=...): this model ({self.model.config.model_type}) has no "
                "vision tower"
            )
        before = self._compilations()
        for height, width in image_sizes:
            self.encoders.compile_image(height, width)
        self.runner.compile_steps(workers=workers, progress=progress)
        self.runner.compile_prime()
        if self.runner.memory is not None:  # a request's memory write, then the reset
            self.runner.set_memory(0, self.encoders.compile_audio())
            self.runner.set_memory(0, None)
        self._compilations_at_warmup = self._compilations()
        return self._compilations_at_warmup - before

    def _compilations(self) -> int:
        return self.runner.num_compilations + (
            self.encoders.num_compilations if self.encoders is not None else 0
        )

    # Requests.
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (image placeholders expanded)."""
        return self.prepare_prompt(prompt)[0]

    def prepare_prompt(self, prompt: Prompt) -> tuple[list[int], MultimodalInputs | None]:
        """Token ids of a prompt and its multimodal inputs (`prompts.prepare_prompt`)."""
        return prepare_prompt(self.model.config, self.tokenizer, prompt)

    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> str:
        """Queue one completion (n=1; `generate` expands n>1). Raises ValueError for bad
        input and QueueFullError when the waiting queue is full."""
        params = params or SamplingParams()
        params.validate(self.config.max_logprobs)
        ids, mm = self.prepare_prompt(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        limit = self.config.max_model_len
        if len(ids) >= limit:
            raise ValueError(
                f"the prompt has {len(ids)} tokens; max_model_len is {limit} "
                "(the prompt must leave room for at least one generated token)"
            )
        request_id = request_id or f"req-{next(self._counter)}-{uuid.uuid4().hex[:8]}"
        if request_id in self._tracks:
            raise ValueError(f"request id {request_id!r} is already in use")
        seed = params.seed if params.seed is not None else int(self._rng.integers(2**31))
        max_tokens = min(params.max_tokens or limit, limit - len(ids))
        request = Request(
            request_id,
            ids,
            params,
            seed,
            arrival_time or time.monotonic(),
            priority,
            extra_hash=mm.content_hash if mm is not None else b"",
            mm=mm,
            max_output_tokens=max_tokens,
        )
        self.scheduler.add(request)
        stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else self.eos_token_ids
        )
        detok = None
        if self.tokenizer is not None:
            from autoglm_jax.processing.detokenizer import IncrementalDetokenizer

            detok = IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens)
        self._tracks[request_id] = Track(request, detok, stop_ids, max_tokens)
        return request_id

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its pages. Returns False if it is unknown or finished."""
        track = self._tracks.get(request_id)
        if track is None or track.request.is_finished:
            return False
        track.request.drop_pending()
        self.scheduler.finish(track.request, "abort")
        if track.request.mm is not None:
            track.request.mm.release()
        return True

    def has_unfinished(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    # The loop.
    def step(self) -> list[StreamDelta]:
        """Schedule and dispatch one device step, then take in the sampled tokens of the step
        before it (async scheduling: the host prepares step n+1 while step n runs) or, with
        `async_scheduling=False`, of this one. Returns what changed for each request."""
        out = self.scheduler.schedule()
        deltas = [self._tracks[r.request_id].delta() for r in out.timed_out]
        if out.chunks:
            self._dispatch(out.chunks)
        # Nothing scheduled: every running request waits for a token in flight.
        keep = 1 if self.config.async_scheduling and out.chunks else 0
        while len(self._in_flight) > keep:
            deltas += self._take_in(self._in_flight.popleft())
        return deltas

    def _dispatch(self, chunks: Sequence[ScheduledChunk]) -> None:
        for c in chunks:
            r = c.request
            if not c.reset_penalties:
                continue
            if _uses_penalties(r.params):
                self.runner.prime_penalties(r.slot, r.prompt_token_ids, r.output_token_ids)
            self._admit_media(r)
        sampling = SamplingArrays.build(
            [c.request.params for c in chunks],
            [c.request.seed for c in chunks],
            # pending tokens count: the key index is the same as if they were back
            [len(c.request.output_token_ids) for c in chunks],
            self.config.max_num_seqs,
        )
        previous = self._in_flight[-1].rows if self._in_flight else {}
        seqs = describe(chunks, self.runner.mrope, {r: i for r, (i, _) in previous.items()})
        arrays = self.runner.dispatch(seqs, sampling)
        self.num_steps += 1
        rows: dict[Request, tuple[int, int]] = {}
        for i, c in enumerate(chunks):
            r = c.request
            if c.samples:  # before the PENDING token makes the request one token longer
                rows[r] = (i, len(r.output_token_ids))
                r.output_token_ids.append(PENDING)
            r.num_computed_tokens += c.num_tokens
            self.scheduler.register_computed_pages(r)
        logprobs = any(c.request.params.logprobs is not None for c in chunks)
        self._in_flight.append(_InFlight(arrays, rows, logprobs))

    def _take_in(self, step: _InFlight) -> list[StreamDelta]:
        """Fetch a dispatched step's sampled tokens (logprobs only when asked for) and apply
        them; samples of requests that finished meanwhile are dropped."""
        tokens = np.asarray(step.arrays[0])
        chosen, top_ids, top_vals = jax.device_get(step.arrays[1:]) if step.logprobs else [None] * 3
        now = time.monotonic()
        deltas = []
        for r, (i, index) in step.rows.items():
            track = self._tracks.get(r.request_id)
            if r.is_finished or track is None or track.request is not r:
                continue
            token = int(tokens[i])
            r.output_token_ids[index] = token
            r.first_token_time = r.first_token_time or now
            self.num_generated_tokens += 1
            self.scheduler.register_computed_pages(r)
            if r.params.logprobs is not None:
                k = r.params.logprobs
                track.token_logprobs.append(float(chosen[i]))
                track.logprobs.append(
                    {int(t): float(v) for t, v in zip(top_ids[i][:k], top_vals[i][:k])}
                )
            self._process_token(track, token, index + 1)
            deltas.append(track.delta())
        return deltas

    def _admit_media(self, r: Request) -> None:
        """Encoders run once per request (kept across preemption); the CGA memory row of the
        request's slot is (re)written at every admission."""
        mm = r.mm
        if mm is not None and mm.pixel_values is not None and mm.image_embeds is None:
            mm.image_embeds = self.encoders.image_embeds(mm)
        if self.runner.memory is not None:
            has_audio = mm is not None and mm.audio_features is not None
            self.runner.set_memory(r.slot, self.encoders.audio_memory_kv(mm) if has_audio else None)

    def _process_token(self, track: Track, token: int, num_outputs: int) -> None:
        """Stops and limits after the request's `num_outputs`-th output token."""
        r = track.request
        params = r.params
        if token in track.stop_ids:
            track.stop_reason = token if token not in self.eos_token_ids else None
            self._finish(track, "stop")
            return
        if track.detok is not None:
            track.text += track.detok.push(token)
            if params.stop and track.stop_string_hit():
                self._finish(track, "stop")
                return
        if num_outputs >= track.max_tokens:
            if track.detok is not None:
                track.text += track.detok.finish()
                if params.stop and track.stop_string_hit():
                    self._finish(track, "stop")
                    return
            self._finish(track, "length")

    def _finish(self, track: Track, reason: str) -> None:
        track.request.drop_pending()
        self.scheduler.finish(track.request, reason)
        if track.request.mm is not None:
            track.request.mm.release()

    def output(self, request_id: str) -> RequestOutput:
        return self._tracks[request_id].output()

    def release(self, request_id: str) -> None:
        """Forget a finished request's host-side state."""
        track = self._tracks.get(request_id)
        if track is not None and track.request.is_finished:
            del self._tracks[request_id]

    # Offline and streaming front ends.
    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> list[RequestOutput]:
        """Run a batch to completion (like vLLM's LLM.generate). Outputs keep prompt order; a
        request with n > 1 gets n completions in `outputs`. `on_finished()` is called as each
        completion finishes (for progress displays)."""
        if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params_list = (
            list(params)
            if isinstance(params, (list, tuple))
            else [params or SamplingParams()] * len(prompts)
        )
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} SamplingParams")
        groups: list[list[str]] = []
        for prompt, p in zip(prompts, params_list):
            ids = []
            for j in range(p.n):
                sub = dataclasses.replace(p, n=1, seed=None if p.seed is None else p.seed + j)
                ids.append(self.add_request(prompt, sub))
            groups.append(ids)
        while self.has_unfinished():
            for d in self.step():
                if d.finished and on_finished is not None:
                    on_finished()
        results = []
        for ids in groups:
            outs = [self.output(i) for i in ids]
            for k, o in enumerate(outs):
                o.outputs[0].index = k
            first = outs[0]
            results.append(
                RequestOutput(
                    first.request_id,
                    first.prompt_token_ids,
                    [o.outputs[0] for o in outs],
                    True,
                    first.num_cached_tokens,
                    next((o.error for o in outs if o.error), None),
                )
            )
            for i in ids:
                self.release(i)
        return results

    def stream(
        self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None
    ) -> Iterator[StreamDelta]:
        """Yield text deltas of one request as it decodes (other queued requests run too)."""
        rid = self.add_request(prompt, params, request_id)
        try:
            while True:
                for d in self.step():
                    if d.request_id == rid and (d.text or d.token_ids or d.finished):
                        yield d
                        if d.finished:
                            return
        finally:
            self.abort(rid)
            self.release(rid)

    def stats(self) -> dict[str, Any]:
        a = self.allocator
        return {
            "compilations": self._compilations(),
            "compilations_after_warmup": self._compilations() - self._compilations_at_warmup,
            "num_pages": a.num_pages - 1,
            "free_pages": a.num_free,
            "kv_cache_usage": a.usage,
            "prefix_cache_hit_rate": a.hit_rate,
            "prefix_cache_queries": a.prefix_queries,
            "prefix_cache_hits": a.prefix_hits,
            "num_waiting": len(self.scheduler.waiting),
            "num_running": len(self.scheduler.running),
            "num_preemptions": self.scheduler.num_preemptions,
            "num_generated_tokens": self.num_generated_tokens,
            "num_steps": self.num_steps,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "attention_backend": self.attention_impl,
        }


def _uses_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


__all__ = ["Engine", "EngineConfig", "QueueFullError", "SamplingParams", "Status"]
