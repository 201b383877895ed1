"""The device side: KV pages, the penalty state, and one jitted step over a flat token batch.

Token counts are padded to a few buckets and sequences to a fixed number of slots, so the
number of XLA compilations is bounded by the buckets whatever the workload. The KV pages and
the penalty state are donated to every step.

Each step picks its attention kernel: on the Pallas path a step in which every sequence has
exactly one query token (pure decode) runs a program compiled with `decode_only=True` (the
decode kernel), any other step the mixed program (the ragged kernel). A pure decode step
holds at most max_num_seqs tokens, so only the buckets up to the one holding max_num_seqs
tokens get a decode program: steps compile to len(buckets) + len(decode_buckets) programs
at most (`step_shapes`, all compiled by `compile_steps`). The XLA path has no decode kernel of
its own (`has_decode_kernel`): no decode buckets, every step the mixed one.

Every step of a multimodal model carries image rows, T of them (a step never holds more image
tokens than tokens): the rows its prompt chunks need, zero padded, or a kept all-zero block.
So text and image steps share their bucket's program, and warm-up covers image prompts too,
instead of a program per (bucket, image-row count) compiled when met.

A step's input tokens may be samples of the step before, not yet back on the host (async
scheduling): the runner keeps the last step's sampled tokens on the device (`prev_tokens`)
and a token row with `from_prev >= 0` reads its id from there. So the engine can dispatch step
n+1 before it fetches step n's tokens; `dispatch` returns device arrays and never waits.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from autoglm_jax.engine.packing import Layout, pack, unpack
from autoglm_jax.engine.paged_attention import PagedAttention, has_decode_kernel
from autoglm_jax.engine.sampling import (
    PenaltyState,
    SamplingArrays,
    prime_penalty_slot,
    sample,
    top_logprobs,
)
from autoglm_jax.engine.step_plan import SeqStep
from autoglm_jax.kernels import KVCache
from autoglm_jax.nn.fusion import MemoryKV

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepInputs:
    input_ids: Array  # i32[T]
    positions: Array  # i32[T], or i32[3, T] under M-RoPE
    attention: PagedAttention
    logits_indices: Array  # i32[S] row of each sequence's last token
    seq_slots: Array  # i32[S] penalty-state slot of each sequence (0 for padding)
    do_sample: Array  # bool[S] whether the sequence samples a token this step
    sampling: SamplingArrays
    mm_embeds: Array | None = None  # [T, D] image rows of this step (zero padded); multimodal
    mm_index: Array | None = None  # i32[T] row of mm_embeds for each token, -1: text
    memory_rows: Array | None = None  # i32[T] CGA memory pool row of each token, -1: none
    from_prev: Array | None = None  # i32[T] previous step's sample row this token is, -1: own id


class StepShape(NamedTuple):
    """What selects a step's compiled program."""

    tokens: int  # the token bucket T
    decode_only: bool  # every sequence has one query token: the decode attention kernel


def token_buckets(max_tokens: int, smallest: int = 16) -> list[int]:
    """Powers of two from `smallest` up to max_tokens (inclusive, as the last bucket)."""
    out, b = [], smallest
    while b < max_tokens:
        out.append(b)
        b *= 2
    out.append(max_tokens)
    return out


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} tokens exceed the largest bucket {buckets[-1]}")


class ModelRunner:
    def __init__(
        self,
        module: Any,
        params: Any,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        vocab_size: int,
        num_pages: int,
        page_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_pages_per_seq: int,
        kv_dtype: Any,
        attention_impl: str,
        max_logprobs: int,
        mesh: Any = None,
        interpret: bool = False,
        mrope: bool = False,
        multimodal: bool = False,
        image_rows: tuple[int, Any] | None = None,
        memory: MemoryKV | None = None,
    ):
        """`image_rows`: (width D, dtype) of the image embedding rows a multimodal model
        splices (the text hidden size and compute dtype). `memory`: the per-slot CGA memory
        pool of a model with audio (`nn.model.memory_pool`), written at admissions by
        `set_memory`."""
        self.module, self.params = module, params
        self.mrope = mrope
        self.multimodal = multimodal
        if multimodal and image_rows is None:
            raise ValueError("a multimodal runner needs image_rows=(width, dtype)")
        self.image_rows = image_rows
        self._no_image_rows: dict[int, Array] = {}  # bucket T -> zeros [T, D], on the device
        self._replicated = None if mesh is None else NamedSharding(mesh, P())
        self.page_size = page_size
        self.max_num_seqs = max_num_seqs
        self.max_pages_per_seq = max_pages_per_seq
        self.buckets = token_buckets(max_num_batched_tokens)
        # A pure decode step has at most max_num_seqs tokens (and at most the token budget).
        top = _bucket(min(max_num_seqs, max_num_batched_tokens), self.buckets)
        self.decode_buckets = (
            [t for t in self.buckets if t <= top] if has_decode_kernel(attention_impl) else []
        )
        self.attention_impl = attention_impl
        self.interpret = interpret
        self.max_logprobs = max_logprobs
        self.vocab_size = vocab_size
        caches = [
            KVCache.allocate(num_pages, page_size, num_kv_heads, head_dim, dtype=kv_dtype)
            for _ in range(num_layers)
        ]
        if mesh is not None:  # tensor parallel: pages split by KV head like the k/v weights
            tensor = mesh.shape.get("tensor", 1)
            head_axis = "tensor" if tensor > 1 and num_kv_heads % tensor == 0 else None
            pages = NamedSharding(mesh, P(None, None, head_axis, None))
            scales = NamedSharding(mesh, P(None, None, head_axis))
            caches = [
                KVCache(
                    *(
                        jax.device_put(x, pages if x.ndim == 4 else scales)
                        if x is not None
                        else None
                        for x in (c.k_pages, c.v_pages, c.k_scales, c.v_scales)
                    )
                )
                for c in caches
            ]
        self.caches = caches
        self.penalties = PenaltyState(
            jnp.zeros((max_num_seqs, vocab_size), jnp.int32),
            jnp.zeros((max_num_seqs, vocab_size), bool),
        )
        self.memory = memory
        # The last step's sampled tokens, left on the device for the next step's inputs.
        self.prev_tokens = jnp.zeros((max_num_seqs,), jnp.int32)
        if self._replicated is not None:
            self.prev_tokens = jax.device_put(self.prev_tokens, self._replicated)
        self.max_prompt_len = max_pages_per_seq * page_size
        self._step = jax.jit(self._step_impl, donate_argnums=(1, 2), static_argnames=("layout",))
        self._prime = jax.jit(prime_penalty_slot, donate_argnums=(0,))
        self._set_memory = jax.jit(MemoryKV.with_row, donate_argnums=(0,))
        # One AOT executable per step shape, with the layout of its packed metadata.
        self._executables: dict[StepShape, tuple[Any, Layout]] = {}
        self.shapes_compiled: set[tuple[Any, ...]] = set()

    @property
    def num_compilations(self) -> int:
        return len(self.shapes_compiled)

    @property
    def step_shapes(self) -> list[StepShape]:
        """Every step program a workload can meet: the mixed program of each token bucket
        and the decode program of each decode bucket (image prompts included)."""
        return [StepShape(t, False) for t in self.buckets] + [
            StepShape(t, True) for t in self.decode_buckets
        ]

    # Compilation. Steps run AOT-compiled executables, one per shape, so that `compile_steps`
    # can build them all before serving (in parallel: XLA compiles outside the GIL) and a
    # shape met later is compiled exactly once, visibly.
    def _dummy_inputs(self, shape: StepShape) -> StepInputs:
        """An all-padding text step of the given shape (no sequence: nothing is written or
        read)."""
        s, tokens = self.max_num_seqs, shape.tokens
        sampling = SamplingArrays.build([], [], [], s)
        attention = PagedAttention(
            np.full((tokens,), -1, np.int32),
            np.zeros((s,), np.int32),
            np.zeros((s, self.max_pages_per_seq), np.int32),
            np.zeros((s + 1,), np.int32),
            np.zeros((1,), np.int32),
            impl=self.attention_impl,
            interpret=self.interpret,
            decode_only=shape.decode_only,
        )
        mm_index = np.full((tokens,), -1, np.int32) if self.multimodal else None
        mm_embeds = self._zero_rows(tokens) if self.multimodal else None
        return StepInputs(
            np.zeros((tokens,), np.int32),
            np.zeros((3, tokens) if self.mrope else (tokens,), np.int32),
            attention,
            np.zeros((s,), np.int32),
            np.zeros((s,), np.int32),
            np.zeros((s,), bool),
            sampling,
            mm_embeds,
            mm_index,
            np.full((tokens,), -1, np.int32) if self.memory is not None else None,
            np.full((tokens,), -1, np.int32),
        )

    def _step_args(self, words: np.ndarray, on_device: tuple[Array, ...]) -> tuple[Any, ...]:
        """The step program's arguments, but its static layout."""
        state = (self.params, self.caches, self.penalties)
        return (*state, words, on_device, self.memory, self.prev_tokens)

    def _lower(self, x: StepInputs) -> tuple[Any, Layout]:
        words, on_device, layout = pack(x)
        return self._step.lower(*self._step_args(words, on_device), layout=layout), layout

    def compile_steps(
        self,
        buckets: Sequence[int] | None = None,
        workers: int = 0,
        progress: Callable[[int, int, int, float], None] | None = None,
    ) -> int:
        """Compile the step programs (`step_shapes`: mixed and decode) of the token
        `buckets` (default: all) not compiled yet, `workers` at a time (0: one per CPU core).
        `progress(k, n, bucket, seconds)` is called as each finishes. Returns how many were
        compiled."""
        todo = [
            shape
            for shape in self.step_shapes
            if (buckets is None or shape.tokens in buckets) and shape not in self._executables
        ]
        if not todo:
            return 0
        start = time.perf_counter()
        # Tracing holds the GIL, so lower one by one; the XLA compiles then overlap.
        lowered = [(shape, *self._lower(self._dummy_inputs(shape))) for shape in todo]
        workers = workers or os.cpu_count() or 1
        with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
            futures = {pool.submit(low.compile): (shape, layout) for shape, low, layout in lowered}
            for k, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                shape, layout = futures[fut]
                self._executables[shape] = (fut.result(), layout)
                self.shapes_compiled.add(("step", *shape))
                if progress is not None:
                    progress(k, len(todo), shape.tokens, time.perf_counter() - start)
        return len(todo)

    def compile_prime(self) -> None:
        """Compile the penalty priming program (one shape: prompts padded to max_model_len)."""
        if ("prime",) not in self.shapes_compiled:
            self.prime_penalties(0, [], [])

    # The jitted functions.
    def _forward(
        self, params: Any, caches: list[KVCache], x: StepInputs, memory: MemoryKV | None
    ) -> tuple[Array, list[KVCache]]:
        positions = x.positions[:, None] if self.mrope else x.positions[None]
        if not self.multimodal:
            return self.module.apply(
                {"params": params},
                x.input_ids[None],
                positions,
                attention=x.attention,
                kv_caches=caches,
                logits_indices=x.logits_indices[None],
            )

        def run(m: Any) -> Any:
            image_index = None if x.mm_embeds is None else x.mm_index[None]
            extra = {}
            if memory is not None:
                extra = {"memory": memory, "memory_rows": x.memory_rows[None]}
            return m(
                None,
                positions,
                inputs_embeds=m.embed_step(x.input_ids[None], x.mm_embeds, image_index),
                attention=x.attention,
                kv_caches=caches,
                logits_indices=x.logits_indices[None],
                **extra,
            )

        return self.module.apply({"params": params}, method=run)

    def set_memory(self, slot: int, mkv: MemoryKV | None) -> None:
        """The slot's row of the memory pool := one request's memory (None: none)."""
        self.shapes_compiled.add(("memory", mkv is None))
        self.memory = self._set_memory(self.memory, jnp.int32(slot), mkv)

    def _step_impl(
        self,
        params: Any,
        caches: list[KVCache],
        pen: PenaltyState,
        words: Array,
        on_device: tuple[Array, ...],
        memory: MemoryKV | None,
        prev_tokens: Array,
        *,
        layout: Layout,
    ) -> tuple[Any, ...]:
        x: StepInputs = unpack(words, on_device, layout)
        if x.from_prev is not None:
            own = x.from_prev < 0
            taken = prev_tokens[jnp.where(own, 0, x.from_prev)]
            x = dataclasses.replace(x, input_ids=jnp.where(own, x.input_ids, taken))
        logits, caches = self._forward(params, caches, x, memory)
        logits = logits[0, :, : self.vocab_size].astype(jnp.float32)  # [S, V]
        tokens = sample(
            logits,
            x.sampling,
            lambda: (pen.output_counts[x.seq_slots], pen.prompt_mask[x.seq_slots]),
        )
        s, k = logits.shape[0], self.max_logprobs
        chosen, top_ids, top_vals = jax.lax.cond(  # only when some request asked for them
            jnp.any(x.sampling.logprobs),
            lambda: top_logprobs(logits, tokens, k),
            lambda: (
                jnp.zeros((s,), jnp.float32),
                jnp.zeros((s, k), jnp.int32),
                jnp.zeros((s, k), jnp.float32),
            ),
        )
        if self._replicated is not None:  # the next step's prev_tokens, placed as compiled
            tokens = jax.lax.with_sharding_constraint(tokens, self._replicated)
        rows = jnp.where(x.do_sample, x.seq_slots, pen.output_counts.shape[0])
        new_counts = pen.output_counts.at[rows, tokens].add(1, mode="drop")
        return (
            (tokens, chosen, top_ids, top_vals),
            caches,
            PenaltyState(new_counts, pen.prompt_mask),
        )

    # Host side.
    def prime_penalties(self, slot: int, prompt: Sequence[int], outputs: Sequence[int]) -> None:
        n = self.max_prompt_len  # one shape: a prompt plus its outputs never pass max_model_len
        p = np.full((n,), -1, np.int32)
        p[: len(prompt)] = prompt
        o = np.full((n,), -1, np.int32)
        o[: len(outputs)] = outputs
        self.shapes_compiled.add(("prime",))
        self.penalties = self._prime(self.penalties, jnp.int32(slot), p, o)

    def dispatch(self, seqs: Sequence[SeqStep], sampling: SamplingArrays) -> tuple[Array, ...]:
        """Enqueue one step on the device and return at once: (tokens i32[S], chosen logprob
        f32[S], top ids i32[S, k], top values f32[S, k]) as device arrays, row i for seqs[i].
        The tokens also become the next step's `prev_tokens`."""
        x = self.build_inputs(seqs, sampling)
        shape = StepShape(int(x.input_ids.shape[0]), x.attention.decode_only)
        if shape not in self._executables:  # a shape warm-up did not cover
            lowered, layout = self._lower(x)
            self._executables[shape] = (lowered.compile(), layout)
            self.shapes_compiled.add(("step", *shape))
        executable, compiled_layout = self._executables[shape]
        words, on_device, layout = pack(x)  # one host-to-device copy of the metadata
        if layout != compiled_layout:
            raise RuntimeError(f"the inputs of step shape {shape} differ from its program's")
        out, self.caches, self.penalties = executable(*self._step_args(words, on_device))
        self.prev_tokens = out[0]
        return out

    def _zero_rows(self, t: int) -> Array:
        """The image rows of a step without image tokens: zeros [t, D], made once a bucket."""
        if t not in self._no_image_rows:
            width, dtype = self.image_rows
            zeros = jnp.zeros((t, width), dtype)
            if self._replicated is not None:
                zeros = jax.device_put(zeros, self._replicated)
            self._no_image_rows[t] = zeros
        return self._no_image_rows[t]

    def _image_rows(
        self, seqs: Sequence[SeqStep], t: int
    ) -> tuple[Array | None, np.ndarray | None]:
        """The image embedding rows this step's tokens need, zero padded to the token bucket t
        (there are at most t), and each token's row (-1: a text token)."""
        if not self.multimodal:
            return None, None
        index = np.full((t,), -1, np.int32)
        pieces = []
        count, row = 0, 0
        for q in seqs:
            if q.image_embeds is not None:
                used = q.image_index >= 0
                index[row : row + q.num_tokens][used] = count + q.image_index[used]
                pieces.append(q.image_embeds)
                count += int(q.image_embeds.shape[0])
            row += q.num_tokens
        if not pieces:
            return self._zero_rows(t), index
        width, dtype = self.image_rows
        embeds = jnp.concatenate([jnp.asarray(p, dtype) for p in pieces], axis=0)
        if embeds.shape[1] != width:
            raise ValueError(f"image rows are {embeds.shape[1]} wide; the model takes {width}")
        embeds = jnp.pad(embeds, ((0, t - count), (0, 0)))
        return embeds, index

    def build_inputs(self, seqs: Sequence[SeqStep], sampling: SamplingArrays) -> StepInputs:
        total = sum(q.num_tokens for q in seqs)
        t = _bucket(total, self.buckets)
        s = self.max_num_seqs
        if len(seqs) > s:
            raise ValueError(f"{len(seqs)} sequences exceed max_num_seqs={s}")
        ids = np.zeros((t,), np.int32)
        pos = np.zeros((3, t) if self.mrope else (t,), np.int32)
        memory_rows = np.full((t,), -1, np.int32)
        from_prev = np.full((t,), -1, np.int32)
        slots = np.full((t,), -1, np.int32)
        kv_lens = np.zeros((s,), np.int32)
        tables = np.zeros((s, self.max_pages_per_seq), np.int32)
        cu = np.zeros((s + 1,), np.int32)
        logits_idx = np.zeros((s,), np.int32)
        seq_slots = np.zeros((s,), np.int32)
        do_sample = np.zeros((s,), bool)
        row = 0
        for i, q in enumerate(seqs):
            n = q.num_tokens
            positions = np.arange(q.kv_len - n, q.kv_len)
            ids[row : row + n] = q.token_ids
            pos[..., row : row + n] = q.positions
            memory_rows[row : row + n] = q.slot
            from_prev[row + n - 1] = q.prev_index
            slots[row : row + n] = (
                q.pages[positions // self.page_size] * self.page_size + positions % self.page_size
            )
            kv_lens[i] = q.kv_len
            tables[i, : len(q.pages)] = q.pages
            row += n
            cu[i + 1] = row
            logits_idx[i] = row - 1
            seq_slots[i] = q.slot
            do_sample[i] = q.samples
        cu[len(seqs) + 1 :] = row
        mm_embeds, mm_index = self._image_rows(seqs, t)
        attention = PagedAttention(
            slots,
            kv_lens,
            tables,
            cu,
            np.array([len(seqs)], np.int32),
            impl=self.attention_impl,
            interpret=self.interpret,
            # All decode: sequence i owns token row i, as the decode kernel's contract asks.
            decode_only=bool(self.decode_buckets and seqs) and all(q.num_tokens == 1 for q in seqs),
        )
        return StepInputs(
            ids,
            pos,
            attention,
            logits_idx,
            seq_slots,
            do_sample,
            sampling,
            mm_embeds,
            mm_index,
            memory_rows if self.memory is not None else None,
            from_prev,
        )
