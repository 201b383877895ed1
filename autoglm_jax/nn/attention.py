"""Self-attention over a pluggable attention backend.

The decoder computes q, k, v and hands them to a backend: `DenseCausal` for training and
parity tests (batched [B, T]), or the engine's paged backend (a flat token batch whose K/V live
in a page pool). Backends are pytree dataclasses so their metadata arrays trace through jit.
A backend is called as `backend(q, k, v, layer=i, cache=c) -> (out, new_cache)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array


class AttentionBackend(Protocol):
    def __call__(
        self, q: Array, k: Array, v: Array, *, layer: int, cache: Any, sm_scale: float
    ) -> tuple[Array, Any]: ...


def dense_attention(q: Array, k: Array, v: Array, mask: Array, sm_scale: float) -> Array:
    """Grouped-query attention with an explicit mask.

    q [B, T, N, H], k/v [B, S, K, H], mask bool[B, T, S] -> [B, T, N, H].
    Logits and softmax in fp32; the probabilities are cast to v's dtype (as transformers does).
    """
    b, t, n, h = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32)
    logits = logits * sm_scale
    logits = jnp.where(mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)


def causal_mask(segment_ids: Array | None, b: int, t: int) -> Array:
    """bool[B, T, T]: causal by index, and within the same segment when segment_ids is given."""
    idx = jnp.arange(t)
    mask = jnp.broadcast_to(idx[:, None] >= idx[None, :], (b, t, t))
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return mask


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseCausal:
    """Causal attention over the whole [B, T] batch, no cache.

    segment_ids i32[B, T] or None: tokens attend only within their segment (packing, padding).
    """

    segment_ids: Array | None = None  # i32[B, T]

    def __call__(
        self, q: Array, k: Array, v: Array, *, layer: int, cache: Any, sm_scale: float
    ) -> tuple[Array, Any]:
        del layer
        mask = causal_mask(self.segment_ids, q.shape[0], q.shape[1])
        return dense_attention(q, k, v, mask, sm_scale), cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseBidirectional:
    """Full attention within segments (encoders: vision tower images, Whisper, ViT)."""

    segment_ids: Array | None = None  # i32[B, T]

    def __call__(
        self, q: Array, k: Array, v: Array, *, layer: int, cache: Any, sm_scale: float
    ) -> tuple[Array, Any]:
        del layer
        b, t = q.shape[:2]
        if self.segment_ids is None:
            mask = jnp.ones((b, t, k.shape[1]), bool)
        else:
            mask = self.segment_ids[:, :, None] == self.segment_ids[:, None, :]
        return dense_attention(q, k, v, mask, sm_scale), cache
