"""The paged KV cache: a page pool per layer, the write op and int8 (de)quantization.

Pages are [P, page, K, H] (P pages of `page` tokens, K kv heads, H head dim), optionally
stacked over layers as [L, P, page, K, H]. A token lands in slot page_id * page + offset
(vLLM's slot_mapping); negative slots mark padding tokens and are not written. int8 pages
keep one float32 scale per (slot, kv head): symmetric, scale = max|x| / 127.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

_INT8_MAX = 127.0


def quantize_kv(
    x: jax.Array,  # [..., H] float
) -> tuple[jax.Array, jax.Array]:  # int8[..., H], f32[...]
    """Symmetric int8 quantization over the last (head_dim) axis; all-zero vectors get scale 0."""
    x = x.astype(jnp.float32)
    scale = jnp.abs(x).max(axis=-1) / _INT8_MAX
    safe = jnp.where(scale == 0.0, 1.0, scale)
    q = jnp.clip(jnp.round(x / safe[..., None]), -_INT8_MAX, _INT8_MAX).astype(jnp.int8)
    return q, scale


def dequantize_kv(
    x: jax.Array,  # int8[..., H]
    scale: jax.Array,  # f32[...]
    dtype=jnp.float32,
) -> jax.Array:  # dtype[..., H]
    return (x.astype(jnp.float32) * scale[..., None]).astype(dtype)


def _flat_slots(slot_mapping: jax.Array, num_slots: int) -> jax.Array:
    # Negative slots (padding) and slots past the pool become num_slots, which mode="drop"
    # skips. (A plain negative index would wrap around to the last page.)
    ok = (slot_mapping >= 0) & (slot_mapping < num_slots)
    return jnp.where(ok, slot_mapping, num_slots).astype(jnp.int32)


def _scatter(pages: jax.Array, new: jax.Array, slots: jax.Array, layer=None) -> jax.Array:
    """pages [L?, P, page, ...] with new [T, ...] written at flat slots i32[T] (of `layer`)."""
    lead = 0 if layer is None else 1
    p, page = pages.shape[lead : lead + 2]
    flat = pages.reshape(*pages.shape[:lead], p * page, *pages.shape[lead + 2 :])
    idx = _flat_slots(slots, p * page)
    idx = idx if layer is None else (layer, idx)
    # In place when the pages are donated. (XLA:CPU widens bf16/f16 scatters to f32 over the
    # whole pool, so CPU serving should keep float32 or int8 pages.)
    return flat.at[idx].set(new.astype(pages.dtype), mode="drop").reshape(pages.shape)


def write_kv(
    k_pages: jax.Array,  # [L?, P, page, K, H]
    v_pages: jax.Array,  # [L?, P, page, K, H]
    k_new: jax.Array,  # [T, K, H]
    v_new: jax.Array,  # [T, K, H]
    slot_mapping: jax.Array,  # i32[T]; page_id * page + offset, negative = padding
    layer=None,  # i32[] layer of stacked pages; None for one layer
) -> tuple[jax.Array, jax.Array]:
    """Writes this step's K/V into their slots. Jit it with the pages donated to update in place."""
    return (
        _scatter(k_pages, k_new, slot_mapping, layer),
        _scatter(v_pages, v_new, slot_mapping, layer),
    )


def write_kv_quantized(
    k_pages: jax.Array,  # int8[L?, P, page, K, H]
    v_pages: jax.Array,  # int8[L?, P, page, K, H]
    k_scales: jax.Array,  # f32[L?, P, page, K]
    v_scales: jax.Array,  # f32[L?, P, page, K]
    k_new: jax.Array,  # [T, K, H] float
    v_new: jax.Array,  # [T, K, H] float
    slot_mapping: jax.Array,  # i32[T]
    layer=None,  # i32[] layer of stacked pages; None for one layer
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Quantizes this step's K/V per token and head and writes values and scales."""
    kq, ks = quantize_kv(k_new)
    vq, vs = quantize_kv(v_new)
    return tuple(
        _scatter(x, new, slot_mapping, layer)
        for x, new in ((k_pages, kq), (v_pages, vq), (k_scales, ks), (v_scales, vs))
    )


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["k_pages", "v_pages", "k_scales", "v_scales"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Paged K/V for one layer ([P, ...]) or for all layers stacked ([L, P, ...])."""

    k_pages: jax.Array  # [L?, P, page, K, H] (int8 if quantized)
    v_pages: jax.Array  # [L?, P, page, K, H]
    k_scales: jax.Array | None = None  # f32[L?, P, page, K], int8 pages only
    v_scales: jax.Array | None = None  # f32[L?, P, page, K], int8 pages only

    @classmethod
    def allocate(
        cls,
        num_pages: int,
        page_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype=jnp.bfloat16,
        num_layers: int | None = None,
    ) -> KVCache:
        """Zero pages; `dtype=jnp.int8` adds float32 scales. `num_layers` stacks a leading axis."""
        lead = () if num_layers is None else (num_layers,)
        shape = (*lead, num_pages, page_size, num_kv_heads, head_dim)
        dtype = jnp.dtype(dtype)
        k, v = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
        if dtype == jnp.int8:
            return cls(k, v, jnp.zeros(shape[:-1], jnp.float32), jnp.zeros(shape[:-1], jnp.float32))
        return cls(k, v)

    @property
    def quantized(self) -> bool:
        return self.k_scales is not None

    @property
    def stacked(self) -> bool:
        return self.k_pages.ndim == 5

    @property
    def num_layers(self) -> int | None:
        return self.k_pages.shape[0] if self.stacked else None

    @property
    def num_pages(self) -> int:
        return self.k_pages.shape[-4]

    @property
    def page_size(self) -> int:
        return self.k_pages.shape[-3]

    @property
    def num_kv_heads(self) -> int:
        return self.k_pages.shape[-2]

    @property
    def head_dim(self) -> int:
        return self.k_pages.shape[-1]

    def layer(self, i) -> KVCache:
        """One layer of a stacked cache (i may be traced)."""
        if not self.stacked:
            raise ValueError("layer() needs a stacked [L, ...] cache")
        return jax.tree.map(lambda x: x[i], self)

    def write(
        self,
        k_new: jax.Array,  # [T, K, H]
        v_new: jax.Array,  # [T, K, H]
        slot_mapping: jax.Array,  # i32[T]
        layer=None,  # layer index (may be traced), required for a stacked cache
    ) -> KVCache:
        """Returns the cache with this step's K/V written (quantized if the pages are int8)."""
        if self.stacked != (layer is not None):
            raise ValueError("pass layer= exactly when the cache is stacked [L, ...]")
        # A stacked cache is scattered at (layer, slot) directly, so a donated stack is
        # updated in place rather than through a copied layer slice.
        if self.quantized:
            return KVCache(
                *write_kv_quantized(
                    self.k_pages,
                    self.v_pages,
                    self.k_scales,
                    self.v_scales,
                    k_new,
                    v_new,
                    slot_mapping,
                    layer,
                )
            )
        return KVCache(*write_kv(self.k_pages, self.v_pages, k_new, v_new, slot_mapping, layer))

    def read(
        self,
        slots: jax.Array,  # i32[T], non-negative
    ) -> tuple[jax.Array, jax.Array]:  # [T, K, H] each, float (dequantized if int8)
        """Gathers K/V at flat slots of an unstacked cache (for tests and debugging)."""
        if self.stacked:
            raise ValueError("read() needs one layer: use cache.layer(i).read(slots)")

        def get(pages, scales):
            x = pages.reshape(-1, *pages.shape[2:])[slots]
            if scales is not None:
                return dequantize_kv(x, scales.reshape(-1, scales.shape[-1])[slots])
            return x

        return get(self.k_pages, self.k_scales), get(self.v_pages, self.v_scales)


@functools.partial(jax.jit, donate_argnames=("cache",))
def update_kv_cache(
    cache: KVCache,
    k_new: jax.Array,  # [T, K, H]
    v_new: jax.Array,  # [T, K, H]
    slot_mapping: jax.Array,  # i32[T]
    layer: jax.Array | None = None,  # i32[] for a stacked cache
) -> KVCache:
    """Jitted `cache.write` with the cache donated, so the pages are updated in place."""
    return cache.write(k_new, v_new, slot_mapping, layer=layer)
