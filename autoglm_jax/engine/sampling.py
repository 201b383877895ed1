"""Sampling parameters (host) and on-device sampling with per-request parameters as arrays.

Semantics follow vLLM: repetition penalty over prompt and output tokens, frequency/presence
penalties over output tokens, then temperature, then top-k, top-p and min-p filtering. A
temperature of 0 is greedy. Each request samples with its own key, fold_in(key(seed), index of
the token being generated), so the same seed gives the same text whatever else is in the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_GREEDY_EPS = 1e-5


@dataclasses.dataclass
class SamplingParams:
    """Per-request sampling settings (vLLM's names and defaults where they exist)."""

    n: int = 1
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs to return per token
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def validate(self, max_logprobs: int = 20) -> None:
        """Raise ValueError naming the field for out-of-range values."""

        def bad(field: str, why: str) -> None:
            raise ValueError(f"SamplingParams.{field}: {why}")

        if not isinstance(self.n, int) or self.n < 1:
            bad("n", f"must be an integer >= 1, got {self.n!r}")
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            bad("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            bad("temperature", f"must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            bad("top_k", f"must be -1, 0 (disabled) or a positive integer, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        for f in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, f) <= 2.0:
                bad(f, f"must be in [-2, 2], got {getattr(self, f)}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            bad("repetition_penalty", f"must be in (0, 2], got {self.repetition_penalty}")
        if self.logprobs is not None and not 0 <= self.logprobs <= max_logprobs:
            bad("logprobs", f"must be in [0, {max_logprobs}], got {self.logprobs}")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed", f"must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingArrays:
    """Per-sequence sampling parameters for one step (padded rows are greedy)."""

    temperature: Array  # f32[S]
    top_p: Array  # f32[S]
    top_k: Array  # i32[S], 0 = disabled
    min_p: Array  # f32[S]
    frequency_penalty: Array  # f32[S]
    presence_penalty: Array  # f32[S]
    repetition_penalty: Array  # f32[S]
    seed: Array  # u32[S]
    token_index: Array  # i32[S] index of the token being generated (for the key)
    logprobs: Array  # bool[S] whether the request asked for logprobs

    @staticmethod
    def build(
        params: Sequence[SamplingParams | None],
        seeds: Sequence[int],
        token_index: Sequence[int],
        size: int,
    ) -> "SamplingArrays":
        """Host-side packing of `params` into arrays of length `size` (None rows are padding)."""

        def col(fn, dtype, pad):
            out = np.full((size,), pad, dtype)
            for i, p in enumerate(params):
                if p is not None:
                    out[i] = fn(p)
            return out

        seed = np.zeros((size,), np.uint32)
        # Any Python int is a valid seed (negative or huge too): its low 32 bits key the RNG.
        seed[: len(seeds)] = [int(x) & 0xFFFFFFFF for x in seeds]
        index = np.zeros((size,), np.int32)
        index[: len(token_index)] = token_index
        return SamplingArrays(
            temperature=col(lambda p: p.temperature, np.float32, 0.0),
            top_p=col(lambda p: p.top_p, np.float32, 1.0),
            top_k=col(lambda p: max(p.top_k, 0), np.int32, 0),
            min_p=col(lambda p: p.min_p, np.float32, 0.0),
            frequency_penalty=col(lambda p: p.frequency_penalty, np.float32, 0.0),
            presence_penalty=col(lambda p: p.presence_penalty, np.float32, 0.0),
            repetition_penalty=col(lambda p: p.repetition_penalty, np.float32, 1.0),
            seed=seed,
            token_index=index,
            logprobs=col(lambda p: p.logprobs is not None, np.bool_, False),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PenaltyState:
    """Per-slot token statistics for repetition/frequency/presence penalties."""

    output_counts: Array  # i32[slots, V] how often each token was generated
    prompt_mask: Array  # bool[slots, V] tokens present in the prompt


def prime_penalty_slot(
    pen: PenaltyState, slot: Array, prompt: Array, outputs: Array
) -> PenaltyState:
    """Reset one slot's rows: mark `prompt` tokens, count `outputs` (-1 entries are padding)."""
    v = pen.output_counts.shape[1]
    mask = jnp.zeros((v,), bool).at[jnp.where(prompt >= 0, prompt, v)].set(True, mode="drop")
    counts = jnp.zeros((v,), jnp.int32).at[jnp.where(outputs >= 0, outputs, v)].add(1, mode="drop")
    return PenaltyState(pen.output_counts.at[slot].set(counts), pen.prompt_mask.at[slot].set(mask))


def apply_penalties(
    logits: Array, s: SamplingArrays, output_counts: Array, prompt_mask: Array
) -> Array:
    """logits f32[S, V]; output_counts i32[S, V]; prompt_mask bool[S, V]."""
    seen = prompt_mask | (output_counts > 0)
    rep = s.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - s.frequency_penalty[:, None] * output_counts
    return logits - s.presence_penalty[:, None] * (output_counts > 0)


def _filter(logits: Array, s: SamplingArrays) -> Array:
    """Top-k, top-p and min-p filtering of temperature-scaled logits f32[S, V]."""
    v = logits.shape[-1]
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    rank = jnp.arange(v)[None, :]
    k = jnp.where(s.top_k > 0, s.top_k, v)[:, None]
    keep = rank < k
    probs = jax.nn.softmax(jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    # top-p: keep the smallest prefix whose mass reaches top_p (the first token always stays).
    cum_before = jnp.cumsum(probs, axis=-1) - probs
    keep &= cum_before < s.top_p[:, None]
    keep &= probs >= s.min_p[:, None] * probs[:, :1]
    filtered_sorted = jnp.where(keep, sorted_logits, -jnp.inf)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(filtered_sorted, inverse, axis=-1)


def sample(
    logits: Array, s: SamplingArrays, penalty_rows: Callable[[], tuple[Array, Array]]
) -> Array:
    """Next tokens i32[S] from logits f32[S, V] with per-row parameters. `penalty_rows()` gives
    (output_counts i32[S, V], prompt_mask bool[S, V]); it is traced inside a lax.cond, so the
    rows are gathered only when some request uses penalties. Filtering and the random draw are
    skipped the same way when no row needs them."""
    logits = logits.astype(jnp.float32)
    uses_penalties = jnp.any(
        (s.repetition_penalty != 1.0) | (s.frequency_penalty != 0.0) | (s.presence_penalty != 0.0)
    )
    logits = jax.lax.cond(
        uses_penalties, lambda x: apply_penalties(x, s, *penalty_rows()), lambda x: x, logits
    )
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    greedy = s.temperature < _GREEDY_EPS

    def draw_all(x: Array) -> Array:
        scaled = x / jnp.where(greedy, 1.0, s.temperature)[:, None]
        needs_filter = jnp.any((s.top_k > 0) | (s.top_p < 1.0) | (s.min_p > 0.0))
        scaled = jax.lax.cond(needs_filter, lambda y: _filter(y, s), lambda y: y, scaled)

        def draw(row: Array, seed: Array, index: Array) -> Array:
            key = jax.random.fold_in(jax.random.key(seed), index)
            return jax.random.categorical(key, row).astype(jnp.int32)

        sampled = jax.vmap(draw)(scaled, s.seed, s.token_index)
        return jnp.where(greedy, greedy_tokens, sampled)

    return jax.lax.cond(jnp.all(greedy), lambda x: greedy_tokens, draw_all, logits)


def top_logprobs(logits: Array, tokens: Array, k: int) -> tuple[Array, Array, Array]:
    """Logprobs of the model's distribution (before penalties and filtering, as vLLM):
    the chosen token's f32[S], and the top-k ids i32[S, k] and values f32[S, k]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    if k == 0:
        s = logits.shape[0]
        return chosen, jnp.zeros((s, 0), jnp.int32), jnp.zeros((s, 0), jnp.float32)
    values, ids = jax.lax.top_k(logp, k)
    return chosen, ids.astype(jnp.int32), values
