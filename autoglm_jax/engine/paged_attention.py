"""The engine's attention backend: write this step's K/V into the page pool, then run ragged
paged attention over it (Pallas on GPU, XLA on CPU).

`decode_only` is static (a pytree meta field), so the runner's decode and mixed step programs
are distinct compiled executables: an all-decode step runs the decode kernel, any other step
the ragged kernel, with no data-dependent branch inside either. Only a backend with a decode
kernel of its own gets decode programs (`has_decode_kernel`)."""

from __future__ import annotations

import dataclasses
import functools

import jax

from autoglm_jax.kernels import KVCache, ragged_paged_attention, ragged_paged_attention_xla

Array = jax.Array


def has_decode_kernel(impl: str) -> bool:
    """Whether `impl` runs a kernel of its own for all-decode steps (`decode_only`). Pallas
    does; the XLA path's decode steps already take one-token query blocks, so a decode program
    there would compile the same computation a second time."""
    return impl == "pallas"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["slot_mapping", "kv_lens", "block_tables", "cu_q_lens", "num_seqs"],
    meta_fields=["impl", "interpret", "decode_only"],
)
@dataclasses.dataclass(frozen=True)
class PagedAttention:
    """Metadata of one flat ragged batch (B = 1, T tokens of many sequences)."""

    slot_mapping: Array  # i32[T] page_id * page_size + offset; negative for padding tokens
    kv_lens: Array  # i32[S]
    block_tables: Array  # i32[S, max_pages]
    cu_q_lens: Array  # i32[S + 1]
    num_seqs: Array  # i32[1]
    impl: str = "xla"  # "xla" | "pallas"
    interpret: bool = False
    # Every sequence has one query token: sequence s owns q row s (cu_q_lens is arange up
    # to num_seqs). Selects the decode kernel; the XLA path then uses one-token query blocks.
    decode_only: bool = False

    def __call__(
        self, q: Array, k: Array, v: Array, *, layer: int, cache: KVCache, sm_scale: float
    ) -> tuple[Array, KVCache]:
        del layer
        out_dtype = q.dtype
        if cache.k_scales is None and cache.k_pages.dtype != q.dtype:
            q = q.astype(cache.k_pages.dtype)  # e.g. a bf16 cache under fp32 compute
        cache = cache.write(k[0], v[0], self.slot_mapping)
        fn = ragged_paged_attention if self.impl == "pallas" else ragged_paged_attention_xla
        out = fn(
            q[0],
            cache.k_pages,
            cache.v_pages,
            self.kv_lens,
            self.block_tables,
            self.cu_q_lens,
            self.num_seqs,
            sm_scale=sm_scale,
            k_scales=cache.k_scales,
            v_scales=cache.v_scales,
            interpret=self.interpret,  # the XLA path accepts and ignores it
            decode_only=self.decode_only,
        )
        return out[None].astype(out_dtype), cache
