"""Decode attention kernel (interpret mode) against the float64 reference.

Inputs come from the ragged kernel's tests (`make_inputs`): pages shuffled over the pool,
NaN in every KV slot past a length, in unassigned pages and in padding q rows, garbage
metadata for padding sequences. Decode layouts are one query token per live sequence.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm_jax.kernels import (
    DecodeBlockSizes,
    get_decode_block_sizes,
    ragged_paged_attention,
    ragged_paged_attention_xla,
)
from autoglm_jax.kernels.ragged_paged_attention.decode_block_sizes import device_generation
from autoglm_jax.kernels.ragged_paged_attention.random_inputs import TOL, Shape, call, make_inputs
from tests.kernels.test_ragged_paged_attention import check

# Page 8, 6 pages per sequence (48 keys at most). Lengths: a single key, mid-page ends (17, 9,
# 27), exact multiples of a 16-key block (32, 48: no masked block) and of a page (40).
KV_LENS = [1, 17, 40, 9, 32, 48, 27]
SHAPE = Shape(num_tokens=8, num_seqs=8, num_pages=48)


def decode(args, sm_scale, bs: DecodeBlockSizes | None):
    return call(
        ragged_paged_attention,
        args,
        sm_scale=sm_scale,
        interpret=True,
        decode_only=True,
        decode_block_sizes=bs,
    )


def decode_inputs(rng, shape: Shape, kv_lens, **kw):
    return make_inputs(rng, shape, [1] * len(kv_lens), kv_lens, **kw)


# (query heads, KV heads, head dim, q dtype, int8 KV): GQA (G 2, 3, 16), MQA (G 8, 16) and MHA;
# head dims 16, 64, 80, 96, 128; f32 and bf16 q, and int8 pages under both.
HEADS = [
    (4, 2, 64, jnp.float32, False),
    (2, 2, 80, jnp.bfloat16, False),
    (8, 1, 96, jnp.float32, False),
    (16, 1, 128, jnp.bfloat16, False),
    (32, 2, 16, jnp.float32, False),
    (4, 1, 128, jnp.bfloat16, True),
    (6, 2, 80, jnp.float32, True),
]


@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim,dtype,quantized", HEADS)
@pytest.mark.parametrize("splits", [1, 4])
def test_heads_dims_dtypes(num_q_heads, num_kv_heads, head_dim, dtype, quantized, splits):
    shape = Shape(
        num_tokens=8,
        num_seqs=8,
        num_pages=48,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
    )
    args = decode_inputs(
        np.random.default_rng(head_dim + num_q_heads),
        shape,
        KV_LENS,
        dtype=dtype,
        quantized=quantized,
    )
    scale = head_dim**-0.5
    bs = DecodeBlockSizes(block_k=16, num_splits=splits)
    check(decode(args, scale, bs), args, scale, TOL[dtype])


def test_splits_combine_exactly():
    """Any split count gives the unsplit result to float32 rounding, empty splits included."""
    args = decode_inputs(np.random.default_rng(1), SHAPE, KV_LENS)
    whole = np.asarray(decode(args, 0.3, DecodeBlockSizes(block_k=16)))
    check(whole, args, 0.3, 1e-5)
    for splits in (2, 3, 7):  # 7 > the 3 blocks of the longest sequence: empty splits
        split = np.asarray(decode(args, 0.3, DecodeBlockSizes(block_k=16, num_splits=splits)))
        np.testing.assert_allclose(split, whole, atol=2e-6, rtol=0)


@pytest.mark.parametrize("page_size,block_k", [(8, 32), (32, 16), (16, 16)])
def test_blocks_and_pages_of_other_sizes(page_size, block_k):
    """A block may hold several pages or a fraction of one."""
    shape = Shape(num_tokens=4, num_seqs=4, num_pages=24, page_size=page_size, pages_per_seq=4)
    kv_lens = [1, page_size + 3, 4 * page_size, 2 * page_size - 1]
    args = decode_inputs(np.random.default_rng(page_size), shape, kv_lens)
    for splits in (1, 3):
        check(decode(args, 0.5, DecodeBlockSizes(block_k, splits)), args, 0.5, 1e-3)


@pytest.mark.parametrize(
    "num_tokens,num_seqs,live",
    [(8, 5, 5), (4, 8, 3), (8, 8, 0)],
    ids=["rows-past-seq-bucket", "seq-bucket-past-rows", "no-live-sequence"],
)
def test_padding_rows_are_zero(num_tokens, num_seqs, live):
    shape = Shape(num_tokens=num_tokens, num_seqs=num_seqs, num_pages=48)
    args = decode_inputs(np.random.default_rng(live), shape, KV_LENS[:live])
    for splits in (1, 2):
        check(decode(args, 0.4, DecodeBlockSizes(16, splits)), args, 0.4, 1e-3)


def test_single_key_returns_its_value():
    args = decode_inputs(np.random.default_rng(2), SHAPE, [1])
    out = np.asarray(decode(args, 1.0, DecodeBlockSizes(block_k=16)))
    v = np.asarray(args["v_pages"])
    page = int(args["block_tables"][0, 0])
    np.testing.assert_allclose(out[0], np.repeat(v[page, 0], 2, axis=0), atol=1e-6)


def test_dispatch_matches_ragged_kernel_and_xla():
    """decode_only picks the decode kernel; its output equals the ragged kernel's and XLA's."""
    args = decode_inputs(np.random.default_rng(3), SHAPE, KV_LENS, dtype=jnp.bfloat16)
    ragged = call(ragged_paged_attention, args, sm_scale=0.3, interpret=True)
    xla = call(ragged_paged_attention_xla, args, sm_scale=0.3, decode_only=True)
    dec = decode(args, 0.3, None)  # default block sizes from the table
    for out in (ragged, xla, dec):
        check(out, args, 0.3, TOL[jnp.bfloat16])
    np.testing.assert_allclose(
        np.asarray(dec, np.float32), np.asarray(ragged, np.float32), atol=2e-2
    )
    names = ("q", "k_pages", "v_pages", "kv_lens", "block_tables", "cu_q_lens", "num_seqs")
    for decode_only, kernel_name in ((True, "paged_attention_decode"), (False, "ragged_paged")):
        fn = functools.partial(
            ragged_paged_attention, sm_scale=0.3, interpret=True, decode_only=decode_only
        )
        jaxpr = str(jax.make_jaxpr(fn)(*(args[k] for k in names)))
        assert kernel_name in jaxpr and jaxpr.count("pallas_call") == 1


# ----- random decode layouts --------------------------------------------------------------


@st.composite
def decode_layouts(draw):
    n = draw(st.integers(0, SHAPE.num_seqs))
    max_len = SHAPE.pages_per_seq * SHAPE.page_size
    kv_lens = draw(st.lists(st.integers(1, max_len), min_size=n, max_size=n))
    return kv_lens, draw(st.integers(0, 2**31 - 1))


@settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    layout=decode_layouts(),
    bs=st.sampled_from(
        [DecodeBlockSizes(16), DecodeBlockSizes(32, num_splits=2), DecodeBlockSizes(16, 5)]
    ),
    quantized=st.booleans(),
)
def test_random_layouts(layout, bs, quantized):
    kv_lens, seed = layout
    args = decode_inputs(np.random.default_rng(seed), SHAPE, kv_lens, quantized=quantized)
    check(decode(args, 0.4, bs), args, 0.4, 1e-3)


# ----- block sizes ------------------------------------------------------------------------

GLM = dict(head_dim=128, page_size=16, num_q_heads=32, num_kv_heads=2)


@pytest.mark.parametrize("generation,sms", [("sm_90", 132), ("sm_89", 128), ("", 108)])
def test_block_sizes_split_small_batches_only(generation, sms):
    def bs(batch, context):
        return get_decode_block_sizes(
            num_tokens=batch,
            pages_per_seq=context // 16,
            generation=generation,
            sm_count=sms,
            **GLM,
        )

    one = bs(1, 2048)
    assert one.num_splits > 1
    assert one.num_splits <= 2048 // one.block_k  # never more splits than key blocks
    assert bs(1, 32768).num_splits == 64
    assert bs(32, 8192).num_splits > 1
    assert 32 * 2 * bs(32, 8192).num_splits <= 2 * sms  # no tail wave
    assert bs(128, 8192).num_splits == 1
    assert bs(1, 16).num_splits == 1  # one block: nothing to split


def test_block_sizes_for_unknown_generation_and_this_device():
    unknown = get_decode_block_sizes(
        num_tokens=4, pages_per_seq=8, generation="sm_75", sm_count=40, **GLM
    )
    default = get_decode_block_sizes(
        num_tokens=4, pages_per_seq=8, generation="", sm_count=40, **GLM
    )
    assert unknown == default
    generation, sms = device_generation()
    assert sms > 0
    if jax.default_backend() != "gpu":
        assert generation == ""
    with pytest.raises(ValueError, match="power of two"):
        DecodeBlockSizes(block_k=48)
    with pytest.raises(ValueError, match="num_splits"):
        DecodeBlockSizes(block_k=16, num_splits=0)


# ----- Triton lowering (runs on CPU: jaxlib ships the Triton dialect) ----------------------


@pytest.mark.parametrize(
    "num_tokens,num_q_heads,num_kv_heads,head_dim,kv_dtype,splits",
    [
        (1, 32, 2, 128, jnp.bfloat16, 16),  # GLM-4-9B batch 1: G = 16, splits
        (8, 4, 4, 80, jnp.int8, 1),  # MHA, padded head_dim, int8 pages
        (4, 8, 1, 16, jnp.float32, 3),  # MQA, head_dim 16
    ],
)
def test_lowers_to_triton(num_tokens, num_q_heads, num_kv_heads, head_dim, kv_dtype, splits):
    pytest.importorskip("jaxlib.triton.dialect")
    sds = jax.ShapeDtypeStruct
    pages, page, per_seq, t = 256, 16, 64, num_tokens
    q_dtype = jnp.bfloat16 if kv_dtype == jnp.int8 else kv_dtype
    kv = sds((pages, page, num_kv_heads, head_dim), kv_dtype)
    args = (
        sds((t, num_q_heads, head_dim), q_dtype),
        kv,
        kv,
        sds((t,), jnp.int32),
        sds((t, per_seq), jnp.int32),
        sds((t + 1,), jnp.int32),
        sds((1,), jnp.int32),
    )
    scales = {}
    if kv_dtype == jnp.int8:
        scale = sds((pages, page, num_kv_heads), jnp.float32)
        scales = dict(k_scales=scale, v_scales=scale)
    lowered = ragged_paged_attention.trace(
        *args,
        sm_scale=0.1,
        decode_only=True,
        decode_block_sizes=DecodeBlockSizes(block_k=64, num_splits=splits),
        **scales,
    ).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert "xla.gpu.triton" in text and "paged_attention_decode" in text
