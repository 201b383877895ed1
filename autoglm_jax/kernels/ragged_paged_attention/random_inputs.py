"""Random inputs for checking a ragged paged attention implementation against the reference.

Used by the kernel tests (interpret mode on CPU) and by `python -m infer check-attention`
(the real kernels on a GPU). Inputs are adversarial: pages are shuffled over the pool, and
every KV slot past a sequence's length, every unassigned page and every padding q row holds
NaN, so an implementation that reads anything it should mask returns non-finite values.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from autoglm_jax.kernels.kv_cache import quantize_kv
from autoglm_jax.kernels.ragged_paged_attention.reference import ragged_paged_attention_reference

# Max abs error against the float64 reference, by q dtype (int8 pages are checked against
# their dequantized values, so the same bounds hold).
TOL = {jnp.float32: 1e-3, jnp.bfloat16: 2e-2}


@dataclasses.dataclass(frozen=True)
class Shape:
    num_tokens: int = 24  # T
    num_seqs: int = 5  # S
    num_pages: int = 24  # P
    page_size: int = 8
    pages_per_seq: int = 6
    num_q_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32


def make_inputs(
    rng, shape: Shape, q_lens, kv_lens, *, dtype=jnp.float32, quantized=False, garbage_padding=True
):
    """Random q/K/V and metadata for live sequences with these q and KV lengths.

    Pages are a shuffled subset of the pool; block-table columns past a sequence's pages and
    all padding-sequence metadata are garbage (out-of-range or negative page ids, huge
    lengths); KV slots past each length, unassigned pages and padding q rows are NaN.
    """
    n = len(q_lens)
    sh = shape
    assert sum(q_lens) <= sh.num_tokens and n <= sh.num_seqs
    cu = np.full(sh.num_seqs + 1, sum(q_lens), np.int32)
    cu[: n + 1] = np.concatenate([[0], np.cumsum(q_lens)])
    kv = np.zeros(sh.num_seqs, np.int32)
    kv[:n] = kv_lens
    bt = rng.integers(-5, 10 * sh.num_pages, (sh.num_seqs, sh.pages_per_seq)).astype(np.int32)
    perm = rng.permutation(sh.num_pages)
    k = rng.standard_normal((sh.num_pages, sh.page_size, sh.num_kv_heads, sh.head_dim))
    v = rng.standard_normal(k.shape)
    valid = np.zeros(k.shape[:2], bool)
    used = 0
    for s, kl in enumerate(kv_lens):
        npg = -(-kl // sh.page_size)
        pages = perm[used : used + npg]
        used += npg
        bt[s, :npg] = pages
        slots = (pages[:, None] * sh.page_size + np.arange(sh.page_size)).reshape(-1)
        valid.reshape(-1)[slots[:kl]] = True
    assert used <= sh.num_pages
    if garbage_padding:
        kv[n:] = 10**6
    k[~valid] = np.nan
    v[~valid] = np.nan
    q = rng.standard_normal((sh.num_tokens, sh.num_q_heads, sh.head_dim))
    q[sum(q_lens) :] = np.nan
    args = dict(
        q=jnp.asarray(q, dtype),
        kv_lens=jnp.asarray(kv),
        block_tables=jnp.asarray(bt),
        cu_q_lens=jnp.asarray(cu),
        num_seqs=jnp.asarray([n], jnp.int32),
    )
    if quantized:
        # NaN slots would give NaN scales: quantize finite values, then poison the scales.
        kq, ks = quantize_kv(jnp.asarray(np.nan_to_num(k), jnp.float32))
        vq, vs = quantize_kv(jnp.asarray(np.nan_to_num(v), jnp.float32))
        ks = jnp.where(jnp.asarray(valid)[..., None], ks, jnp.nan)
        vs = jnp.where(jnp.asarray(valid)[..., None], vs, jnp.nan)
        args.update(k_pages=kq, v_pages=vq, k_scales=ks, v_scales=vs)
    else:
        args.update(k_pages=jnp.asarray(k, dtype), v_pages=jnp.asarray(v, dtype))
    return args


def call(fn, args, **kw):
    a = args
    return fn(
        a["q"],
        a["k_pages"],
        a["v_pages"],
        a["kv_lens"],
        a["block_tables"],
        a["cu_q_lens"],
        a["num_seqs"],
        k_scales=a.get("k_scales"),
        v_scales=a.get("v_scales"),
        **kw,
    )


def reference(args, sm_scale):
    """The float reference; for int8 pages, on the dequantized values."""
    a = dict(args)
    if "k_scales" in a:
        for name in ("k", "v"):
            pages = np.asarray(a[f"{name}_pages"], np.float32)
            a[f"{name}_pages"] = pages * np.asarray(a.pop(f"{name}_scales"))[..., None]
        a["q"] = np.asarray(a["q"]).astype(np.float32)
    return call(ragged_paged_attention_reference, a, sm_scale=sm_scale)
