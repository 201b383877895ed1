"""Paged KV cache: writes land in their slots, padding slots write nothing, int8 round-trips."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoglm_jax.kernels import (
    KVCache,
    dequantize_kv,
    quantize_kv,
    ragged_paged_attention_reference,
    ragged_paged_attention_xla,
    update_kv_cache,
    write_kv,
)

P, PAGE, K, H = 6, 4, 2, 16


def _tokens(rng, t):
    return (
        jnp.asarray(rng.standard_normal((t, K, H)), jnp.float32),
        jnp.asarray(rng.standard_normal((t, K, H)), jnp.float32),
    )


def _slots(rng, t, num_padding):
    """Distinct slots of a shuffled pool for t - num_padding tokens, then -1 for padding."""
    live = rng.permutation(P * PAGE)[: t - num_padding]
    return jnp.asarray(np.concatenate([live, -np.ones(num_padding, np.int64)]), jnp.int32)


def test_write_round_trip_and_padding_untouched():
    rng = np.random.default_rng(0)
    k_new, v_new = _tokens(rng, 9)
    slots = _slots(rng, 9, 3)
    fill = 7.0  # a recognisable value that padding writes must not disturb
    k_pages = jnp.full((P, PAGE, K, H), fill)
    v_pages = jnp.full((P, PAGE, K, H), fill)
    k_out, v_out = jax.jit(write_kv)(k_pages, v_pages, k_new, v_new, slots)
    flat_k = np.asarray(k_out).reshape(P * PAGE, K, H)
    flat_v = np.asarray(v_out).reshape(P * PAGE, K, H)
    live = np.asarray(slots[:6])
    np.testing.assert_array_equal(flat_k[live], np.asarray(k_new[:6]))
    np.testing.assert_array_equal(flat_v[live], np.asarray(v_new[:6]))
    untouched = np.setdiff1d(np.arange(P * PAGE), live)
    np.testing.assert_array_equal(flat_k[untouched], fill)  # incl. the last slot (-1 wraps)
    np.testing.assert_array_equal(flat_v[untouched], fill)


def test_slot_layout_is_page_major():
    k_new = jnp.arange(K * H, dtype=jnp.float32).reshape(1, K, H) + 1
    slot = jnp.asarray([3 * PAGE + 2], jnp.int32)  # page 3, offset 2
    k_out, _ = write_kv(jnp.zeros((P, PAGE, K, H)), jnp.zeros((P, PAGE, K, H)), k_new, k_new, slot)
    np.testing.assert_array_equal(np.asarray(k_out[3, 2]), np.asarray(k_new[0]))
    assert float(jnp.abs(k_out).sum()) == float(jnp.abs(k_new).sum())


def test_quantize_round_trip_within_one_step():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((5, K, H)) * rng.uniform(0.01, 10, (5, K, 1)), jnp.float32)
    x = x.at[0, 0].set(0.0)  # an all-zero vector must not divide by zero
    q, scale = quantize_kv(x)
    assert q.dtype == jnp.int8 and scale.shape == (5, K)
    np.testing.assert_allclose(scale, np.abs(np.asarray(x)).max(-1) / 127, rtol=1e-6)
    err = np.abs(np.asarray(dequantize_kv(q, scale)) - np.asarray(x))
    assert (err <= np.asarray(scale)[..., None] * 0.5 + 1e-6).all()
    assert np.asarray(dequantize_kv(q, scale))[0, 0].tolist() == [0.0] * H


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int8])
def test_cache_write_and_read(dtype):
    rng = np.random.default_rng(2)
    cache = KVCache.allocate(P, PAGE, K, H, dtype=dtype)
    assert cache.quantized == (dtype == jnp.int8) and not cache.stacked
    k_new, v_new = _tokens(rng, 7)
    slots = _slots(rng, 7, 2)
    cache = update_kv_cache(cache, k_new, v_new, slots)
    k_read, v_read = cache.read(slots[:5])
    if dtype == jnp.int8:
        step_k = np.abs(np.asarray(k_new[:5])).max(-1, keepdims=True) / 127
        step_v = np.abs(np.asarray(v_new[:5])).max(-1, keepdims=True) / 127
        assert (np.abs(np.asarray(k_read) - np.asarray(k_new[:5])) <= step_k / 2 + 1e-6).all()
        assert (np.abs(np.asarray(v_read) - np.asarray(v_new[:5])) <= step_v / 2 + 1e-6).all()
    else:
        np.testing.assert_array_equal(k_read, k_new[:5])
        np.testing.assert_array_equal(v_read, v_new[:5])
    # nothing but those slots was written (pages started at zero, scales too)
    written = np.zeros(P * PAGE, bool)
    written[np.asarray(slots[:5])] = True
    for x in jax.tree.leaves(cache):
        flat = np.asarray(x).reshape(P * PAGE, -1)
        assert not flat[~written].any()


def test_stacked_cache_writes_one_layer():
    rng = np.random.default_rng(3)
    cache = KVCache.allocate(P, PAGE, K, H, dtype=jnp.int8, num_layers=3)
    assert cache.stacked and cache.num_layers == 3 and cache.page_size == PAGE
    k_new, v_new = _tokens(rng, 4)
    slots = _slots(rng, 4, 1)
    out = update_kv_cache(cache, k_new, v_new, slots, jnp.asarray(1, jnp.int32))
    assert jax.tree.structure(out) == jax.tree.structure(cache)
    for layer in (0, 2):
        assert not any(np.asarray(x[layer]).any() for x in jax.tree.leaves(out))
    k_read, _ = out.layer(1).read(slots[:3])
    np.testing.assert_allclose(k_read, k_new[:3], atol=np.abs(np.asarray(k_new)).max() / 127)
    with pytest.raises(ValueError, match="layer="):
        out.write(k_new, v_new, slots)


def test_written_cache_feeds_attention():
    """A prompt written through the cache attends like the reference on the same K/V."""
    rng = np.random.default_rng(4)
    t, n = 10, 4  # one sequence of 10 tokens, 4 query heads
    k_new, v_new = _tokens(rng, t)
    pages = np.asarray([4, 1, 5])  # non-contiguous
    slots = jnp.asarray((pages[:, None] * PAGE + np.arange(PAGE)).reshape(-1)[:t], jnp.int32)
    cache = KVCache.allocate(P, PAGE, K, H, dtype=jnp.int8)
    cache = cache.write(k_new, v_new, slots)
    q = jnp.asarray(rng.standard_normal((t, n, H)), jnp.float32)
    meta = (
        jnp.asarray([t], jnp.int32),
        jnp.asarray(pages[None], jnp.int32),
        jnp.asarray([0, t], jnp.int32),
        jnp.asarray([1], jnp.int32),
    )
    kw = dict(sm_scale=0.25, k_scales=cache.k_scales, v_scales=cache.v_scales)
    out = ragged_paged_attention_xla(q, cache.k_pages, cache.v_pages, *meta, **kw)
    ref = ragged_paged_attention_reference(q, cache.k_pages, cache.v_pages, *meta, **kw)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # and against attention over the original float K/V, within quantization error
    k_f = np.repeat(np.asarray(k_new), n // K, axis=1)
    v_f = np.repeat(np.asarray(v_new), n // K, axis=1)
    logits = np.einsum("tnh,snh->nts", np.asarray(q), k_f) * 0.25
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("nts,snh->tnh", w, v_f), atol=0.05)
