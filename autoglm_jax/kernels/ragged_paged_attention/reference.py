"""Reference ragged paged attention: one sequence at a time, dense softmax, float64 on host.

Deliberately simple and slow. The metadata is read on the host (so this is not jittable);
each live sequence gathers exactly its pages, dequantizes them if they are int8, and runs
ordinary causal attention for its chunk of queries, which sits at the end of its KV. The
arithmetic is NumPy float64: independent of XLA's dot precision, and with no per-shape
compilation (eager jnp would compile every op for every new sequence length).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.kernels.ragged_paged_attention.validation import validate_inputs

# Einsum legend: T query tokens, S key tokens, N query heads, K kv heads,
# G queries per kv head, H head dim.


def ragged_paged_attention_reference(
    q: jax.Array,  # [T, N, H]
    k_pages: jax.Array,  # [P, page, K, H] (int8 if quantized)
    v_pages: jax.Array,  # [P, page, K, H]
    kv_lens: jax.Array,  # i32[S]
    block_tables: jax.Array,  # i32[S, max_pages]
    cu_q_lens: jax.Array,  # i32[S + 1]
    num_seqs: jax.Array,  # i32[1]
    *,
    sm_scale: float,
    k_scales: jax.Array | None = None,  # f32[P, page, K]
    v_scales: jax.Array | None = None,  # f32[P, page, K]
    interpret: bool = False,
) -> jax.Array:  # [T, N, H], zeros on padding rows
    """Same contract as `ragged_paged_attention`; `interpret` is accepted and ignored."""
    del interpret
    dims = validate_inputs(
        q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs, k_scales, v_scales
    )
    kv_lens = np.asarray(kv_lens)
    block_tables = np.asarray(block_tables)
    cu_q_lens = np.asarray(cu_q_lens)
    n = int(np.asarray(num_seqs)[0])

    k_all = np.asarray(k_pages, np.float64)
    v_all = np.asarray(v_pages, np.float64)
    if dims.quantized:
        k_all = k_all * np.asarray(k_scales, np.float64)[..., None]
        v_all = v_all * np.asarray(v_scales, np.float64)[..., None]
    g = dims.queries_per_kv_head
    q_all = np.asarray(q).astype(np.float64)
    out = np.zeros(q.shape, np.float64)
    for s in range(n):
        q0, q1, kv_len = int(cu_q_lens[s]), int(cu_q_lens[s + 1]), int(kv_lens[s])
        q_len = q1 - q0
        if q_len == 0:
            continue
        if not 0 < q_len <= kv_len <= dims.pages_per_seq * dims.page_size:
            raise ValueError(
                f"sequence {s}: need 0 < q_len ({q_len}) <= kv_len ({kv_len}) <= "
                f"pages_per_seq * page_size ({dims.pages_per_seq * dims.page_size})"
            )
        pages = block_tables[s, : -(-kv_len // dims.page_size)]
        k = k_all[pages].reshape(-1, dims.num_kv_heads, dims.head_dim)[:kv_len]
        v = v_all[pages].reshape(-1, dims.num_kv_heads, dims.head_dim)[:kv_len]
        qs = q_all[q0:q1].reshape(q_len, dims.num_kv_heads, g, dims.head_dim)
        logits = np.einsum("TKGH,SKH->KGTS", qs, k) * sm_scale
        q_pos = kv_len - q_len + np.arange(q_len)
        causal = np.arange(kv_len)[None, :] <= q_pos[:, None]  # [T, S]
        logits = np.where(causal, logits, -np.inf)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        o = np.einsum("KGTS,SKH->TKGH", weights, v)
        out[q0:q1] = o.reshape(q_len, dims.num_q_heads, dims.head_dim)
    return jnp.asarray(out.astype(np.float32)).astype(q.dtype)
