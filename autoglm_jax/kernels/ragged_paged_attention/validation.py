"""Shape and dtype checks shared by the kernel, the XLA path and the reference.

Everything here looks only at static shapes and dtypes, so it runs at trace time and costs
nothing per call. Values (lengths, page ids) are traced and cannot be checked; the kernels
clamp them instead so that bad metadata gives wrong numbers, never an out-of-bounds read.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

_FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
MAX_HEAD_DIM = 256


@dataclasses.dataclass(frozen=True)
class Dims:
    """Static sizes of one call (letters as in the einsum legend)."""

    num_tokens: int  # T
    num_q_heads: int  # N
    head_dim: int  # H
    num_pages: int  # P
    page_size: int
    num_kv_heads: int  # K
    num_seqs: int  # S (bucket size, padding included)
    pages_per_seq: int  # max_pages
    quantized: bool

    @property
    def queries_per_kv_head(self) -> int:  # G
        return self.num_q_heads // self.num_kv_heads


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _dtype(x) -> jnp.dtype:
    return jnp.dtype(x.dtype)


def validate_inputs(
    q,  # [T, N, H]
    k_pages,  # [P, page, K, H]
    v_pages,  # [P, page, K, H]
    kv_lens,  # i32[S]
    block_tables,  # i32[S, max_pages]
    cu_q_lens,  # i32[S + 1]
    num_seqs,  # i32[1]
    k_scales=None,  # f32[P, page, K] iff pages are int8
    v_scales=None,  # f32[P, page, K] iff pages are int8
) -> Dims:
    """Raises ValueError with a readable message if the arguments break the contract."""
    if len(_shape(q)) != 3:
        raise ValueError(f"q must be [tokens, q_heads, head_dim], got shape {_shape(q)}")
    if len(_shape(k_pages)) != 4:
        raise ValueError(
            f"k_pages must be [pages, page_size, kv_heads, head_dim], got shape {_shape(k_pages)}"
        )
    if _shape(k_pages) != _shape(v_pages):
        raise ValueError(
            f"k_pages and v_pages must have the same shape, got {_shape(k_pages)} and "
            f"{_shape(v_pages)}"
        )
    t, n, h = _shape(q)
    p, page, k, hk = _shape(k_pages)
    if hk != h:
        raise ValueError(f"head_dim of q ({h}) and of the KV pages ({hk}) differ")
    if not 16 <= h <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [16, {MAX_HEAD_DIM}], got {h}")
    if t < 1 or p < 1 or page < 1 or k < 1:
        raise ValueError(f"empty dimension in q {_shape(q)} or pages {_shape(k_pages)}")
    if n % k:
        raise ValueError(
            f"the number of query heads ({n}) must be a multiple of the number of KV heads ({k})"
        )
    if _dtype(q) not in _FLOAT_DTYPES:
        raise ValueError(f"q must be float32, bfloat16 or float16, got {_dtype(q)}")
    if _dtype(k_pages) != _dtype(v_pages):
        raise ValueError(
            f"k_pages and v_pages must share a dtype, got {_dtype(k_pages)} and {_dtype(v_pages)}"
        )
    quantized = _dtype(k_pages) == jnp.dtype(jnp.int8)
    if not quantized and _dtype(k_pages) != _dtype(q):
        raise ValueError(
            f"KV pages must have q's dtype ({_dtype(q)}) or be int8, got {_dtype(k_pages)}"
        )
    if quantized:
        for name, s in (("k_scales", k_scales), ("v_scales", v_scales)):
            if s is None:
                raise ValueError(f"int8 KV pages need {name} of shape {(p, page, k)}")
            if _shape(s) != (p, page, k):
                raise ValueError(f"{name} must have shape {(p, page, k)}, got {_shape(s)}")
            if _dtype(s) != jnp.dtype(jnp.float32):
                raise ValueError(f"{name} must be float32, got {_dtype(s)}")
    elif k_scales is not None or v_scales is not None:
        raise ValueError(f"k_scales/v_scales are only for int8 pages; pages are {_dtype(k_pages)}")

    if len(_shape(kv_lens)) != 1:
        raise ValueError(f"kv_lens must be i32[S], got shape {_shape(kv_lens)}")
    s = _shape(kv_lens)[0]
    if s < 1:
        raise ValueError("kv_lens is empty: S must be at least 1 (pad with a dummy sequence)")
    if len(_shape(block_tables)) != 2 or _shape(block_tables)[0] != s:
        raise ValueError(
            f"block_tables must be i32[S={s}, max_pages], got shape {_shape(block_tables)}"
        )
    if _shape(block_tables)[1] < 1:
        raise ValueError("block_tables needs at least one page column")
    if _shape(cu_q_lens) != (s + 1,):
        raise ValueError(f"cu_q_lens must be i32[S+1={s + 1}], got shape {_shape(cu_q_lens)}")
    if _shape(num_seqs) != (1,):
        raise ValueError(f"num_seqs must be i32[1], got shape {_shape(num_seqs)}")
    for name, x in (
        ("kv_lens", kv_lens),
        ("block_tables", block_tables),
        ("cu_q_lens", cu_q_lens),
        ("num_seqs", num_seqs),
    ):
        if _dtype(x) != jnp.dtype(jnp.int32):
            raise ValueError(f"{name} must be int32, got {_dtype(x)}")
    return Dims(
        num_tokens=t,
        num_q_heads=n,
        head_dim=h,
        num_pages=p,
        page_size=page,
        num_kv_heads=k,
        num_seqs=s,
        pages_per_seq=_shape(block_tables)[1],
        quantized=quantized,
    )
