"""Ragged paged attention: Pallas kernel (interpret mode) and XLA path against the reference.

Shapes are small and reused so that each compiled variant serves many cases; interpret mode
runs the real kernel body on CPU. Every KV slot past a sequence's length, every unassigned
page and every padding q row holds NaN, so reading anything that should be masked shows up.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm_jax.kernels import (
    BlockSizes,
    get_block_sizes,
    ragged_paged_attention,
    ragged_paged_attention_reference,
    ragged_paged_attention_xla,
    validate_inputs,
)
from autoglm_jax.kernels.ragged_paged_attention.block_sizes import num_query_blocks
from autoglm_jax.kernels.ragged_paged_attention.kernel import (
    SCHED_KV_LEN,
    SCHED_ROW0,
    SCHED_ROW_END,
    SCHED_SEQ,
    make_schedule,
)
from autoglm_jax.kernels.ragged_paged_attention.random_inputs import (
    TOL,
    Shape,
    call,
    make_inputs,
    reference,
)


def check(out, args, sm_scale, tol):
    ref = np.asarray(reference(args, sm_scale), np.float32)
    out = np.asarray(out, np.float32)
    assert out.shape == args["q"].shape
    assert np.isfinite(out).all(), "non-finite output (a masked NaN slot leaked)"
    live = int(np.asarray(args["cu_q_lens"])[int(args["num_seqs"][0])])
    np.testing.assert_array_equal(out[live:], 0.0, err_msg="padding rows must be zero")
    err = np.abs(out - ref).max()
    assert err <= tol, f"max abs error {err} > {tol}"


def kernel(args, sm_scale, bs: BlockSizes):
    return call(ragged_paged_attention, args, sm_scale=sm_scale, interpret=True, block_sizes=bs)


def xla(args, sm_scale, **kw):
    return call(ragged_paged_attention_xla, args, sm_scale=sm_scale, **kw)


# (q_lens, kv_lens) layouts on the default Shape (page 8).
LAYOUTS = {
    "decode": ([1, 1, 1, 1], [1, 17, 40, 9]),
    "prefill": ([13, 8, 1], [13, 8, 1]),
    # chunks starting mid-page (kv 19 with chunk 7 starts at 12) and crossing two pages.
    "mixed": ([1, 7, 12, 1, 3], [9, 19, 12, 33, 3]),
}
BS = BlockSizes(block_q=4, block_k=16)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(
    "bs", [BS, BlockSizes(block_q=2, block_k=16, num_kv_splits=3)], ids=["nosplit", "split3"]
)
def test_kernel_layouts(layout, bs):
    rng = np.random.default_rng(0)
    args = make_inputs(rng, Shape(), *LAYOUTS[layout])
    check(kernel(args, 0.3, bs), args, 0.3, TOL[jnp.float32])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("block_q", [None, 3])
def test_xla_layouts(layout, block_q):
    rng = np.random.default_rng(1)
    args = make_inputs(rng, Shape(), *LAYOUTS[layout])
    check(xla(args, 0.3, block_q=block_q, block_k=16), args, 0.3, TOL[jnp.float32])


# GQA ratio x head_dim x dtype, covering ratios 1, 2, 8, 16, head dims 64, 80, 96, 128 and
# both float dtypes (int8 pages below use bf16 queries too).
HEADS = [
    (2, 2, 80, jnp.float32),
    (4, 2, 96, jnp.bfloat16),
    (8, 1, 128, jnp.float32),
    (16, 1, 64, jnp.bfloat16),
]


@pytest.mark.parametrize("num_q_heads,num_kv_heads,head_dim,dtype", HEADS)
def test_heads_and_dims(num_q_heads, num_kv_heads, head_dim, dtype):
    shape = Shape(
        num_tokens=12,
        num_seqs=3,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
    )
    rng = np.random.default_rng(head_dim)
    args = make_inputs(rng, shape, [1, 6, 3], [11, 21, 3], dtype=dtype)
    scale = head_dim**-0.5
    check(kernel(args, scale, BlockSizes(block_q=2, block_k=16)), args, scale, TOL[dtype])
    check(xla(args, scale), args, scale, TOL[dtype])


@pytest.mark.parametrize("impl", ["kernel", "xla"])
def test_int8_pages(impl):
    rng = np.random.default_rng(3)
    args = make_inputs(rng, Shape(), *LAYOUTS["mixed"], dtype=jnp.bfloat16, quantized=True)
    out = kernel(args, 0.2, BS) if impl == "kernel" else xla(args, 0.2)
    check(out, args, 0.2, TOL[jnp.bfloat16])


def test_int8_reference_dequantizes():
    rng = np.random.default_rng(4)
    args = make_inputs(rng, Shape(), *LAYOUTS["decode"], quantized=True)
    direct = call(ragged_paged_attention_reference, args, sm_scale=0.2)
    np.testing.assert_allclose(direct, reference(args, 0.2), atol=1e-5)


def test_sequences_of_length_one_and_padding_only():
    rng = np.random.default_rng(5)
    args = make_inputs(rng, Shape(), [1, 1], [1, 1])
    check(kernel(args, 1.0, BS), args, 1.0, 1e-3)
    check(xla(args, 1.0), args, 1.0, 1e-3)
    # softmax over a single key returns that key's value
    v = np.asarray(args["v_pages"])
    page = int(args["block_tables"][0, 0])
    want = np.repeat(v[page, 0], 2, axis=0)  # heads 0,1 share kv head 0; 2,3 kv head 1
    np.testing.assert_allclose(np.asarray(kernel(args, 1.0, BS))[0], want, atol=1e-5)


def test_zero_live_sequences():
    rng = np.random.default_rng(6)
    args = make_inputs(rng, Shape(), [], [])
    for out in (kernel(args, 1.0, BS), xla(args, 1.0)):
        np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_causal_future_keys_do_not_matter():
    """Changing a key after a query's position must not change that query's output."""
    rng = np.random.default_rng(7)
    args = make_inputs(rng, Shape(), [6], [14])
    out = np.asarray(kernel(args, 0.5, BS))
    page = int(args["block_tables"][0, 1])  # holds positions 8..15; the last query is at 13
    args2 = dict(
        args,
        k_pages=args["k_pages"].at[page, 5].set(100.0),
        v_pages=args["v_pages"].at[page, 5].set(100.0),
    )  # position 13
    out2 = np.asarray(kernel(args2, 0.5, BS))
    np.testing.assert_array_equal(out2[:5], out[:5])
    assert np.abs(out2[5] - out[5]).max() > 1e-3


# ----- random ragged layouts --------------------------------------------------------------

HYP_SHAPE = Shape(
    num_tokens=32,
    num_seqs=5,
    num_pages=40,
    page_size=8,
    pages_per_seq=8,
    num_q_heads=4,
    num_kv_heads=2,
    head_dim=32,
)


@st.composite
def layouts(draw):
    n = draw(st.integers(0, HYP_SHAPE.num_seqs))
    budget = HYP_SHAPE.num_tokens
    q_lens, kv_lens = [], []
    for _ in range(n):  # a live sequence may schedule no tokens this step
        kv = draw(st.integers(1, HYP_SHAPE.pages_per_seq * HYP_SHAPE.page_size))
        q = draw(st.integers(0, min(kv, budget)))
        q_lens.append(q)
        kv_lens.append(kv)
        budget -= q
    return q_lens, kv_lens, draw(st.integers(0, 2**31 - 1))


HYP_SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@HYP_SETTINGS
@given(
    layout=layouts(),
    bs=st.sampled_from(
        [BlockSizes(block_q=4, block_k=16), BlockSizes(block_q=2, block_k=32, num_kv_splits=2)]
    ),
)
def test_kernel_random_layouts(layout, bs):
    q_lens, kv_lens, seed = layout
    args = make_inputs(np.random.default_rng(seed), HYP_SHAPE, q_lens, kv_lens)
    check(kernel(args, 0.4, bs), args, 0.4, 1e-3)


@HYP_SETTINGS
@given(layout=layouts(), block_q=st.sampled_from([None, 4]))
def test_xla_random_layouts(layout, block_q):
    q_lens, kv_lens, seed = layout
    args = make_inputs(np.random.default_rng(seed), HYP_SHAPE, q_lens, kv_lens)
    check(xla(args, 0.4, block_q=block_q, block_k=16), args, 0.4, 1e-3)


# ----- schedule and block sizes ------------------------------------------------------------

SCHED_T, SCHED_S = 48, 8


@functools.lru_cache(maxsize=None)
def _schedule_fn(block_q):
    nb = num_query_blocks(SCHED_T, SCHED_S, block_q)
    return nb, jax.jit(
        functools.partial(make_schedule, num_tokens=SCHED_T, block_q=block_q, num_blocks=nb)
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(q_lens=st.lists(st.integers(0, 8), max_size=6), block_q=st.sampled_from([1, 3, 8]))
def test_schedule_covers_every_row_once(q_lens, block_q):
    t, s, n = SCHED_T, SCHED_S, len(q_lens)
    cu = np.full(s + 1, sum(q_lens), np.int32)
    cu[: n + 1] = np.concatenate([[0], np.cumsum(q_lens)])
    kv = np.arange(1, s + 1, dtype=np.int32) * 100
    nb, fn = _schedule_fn(block_q)
    sched = np.asarray(fn(jnp.asarray(kv), jnp.asarray(cu), jnp.asarray([n], jnp.int32)))
    owner = np.full(t, -1)
    for b in range(nb):
        r0, r1 = sched[SCHED_ROW0, b], sched[SCHED_ROW_END, b]
        for r in range(r0, min(r0 + block_q, r1)):
            assert owner[r] == -1, f"row {r} owned twice"
            owner[r] = b
    assert (owner >= 0).all(), "a row has no block"
    for i in range(n):
        for r in range(cu[i], cu[i + 1]):
            assert sched[SCHED_SEQ, owner[r]] == i
            assert sched[SCHED_KV_LEN, owner[r]] == kv[i]
    for r in range(cu[n], t):
        assert sched[SCHED_KV_LEN, owner[r]] == 0


def test_block_sizes_for_glm4_shapes():
    common = dict(head_dim=128, page_size=16, queries_per_kv_head=16, num_kv_heads=2)
    decode_one = get_block_sizes(num_tokens=1, num_seqs=1, pages_per_seq=2048, **common)
    assert decode_one.block_q == 1 and decode_one.num_kv_splits > 1
    decode_big = get_block_sizes(num_tokens=128, num_seqs=128, pages_per_seq=2048, **common)
    assert decode_big.block_q == 1 and decode_big.num_kv_splits == 1
    prefill = get_block_sizes(num_tokens=2048, num_seqs=8, pages_per_seq=256, **common)
    assert prefill.block_q * 16 >= 64 and prefill.num_kv_splits == 1
    with pytest.raises(ValueError, match="power of two"):
        BlockSizes(block_q=1, block_k=48)


@pytest.mark.parametrize("group", [1, 2, 3, 8, 16, 32])
@pytest.mark.parametrize("tokens,seqs", [(1, 1), (128, 128), (700, 9)])
def test_default_block_sizes_suit_triton(group, tokens, seqs):
    bs = get_block_sizes(
        head_dim=128,
        page_size=16,
        queries_per_kv_head=group,
        num_kv_heads=2,
        num_tokens=tokens,
        num_seqs=seqs,
        pages_per_seq=64,
    )
    rows = bs.block_q * (1 << (group - 1).bit_length())
    assert rows >= 16 and rows & (rows - 1) == 0
    assert 1 <= bs.num_kv_splits <= 64


def test_triton_row_constraint_checked_outside_interpret():
    args = make_inputs(np.random.default_rng(11), Shape(), [1], [3])
    with pytest.raises(ValueError, match="power of two >= 16"):
        call(
            ragged_paged_attention,
            args,
            sm_scale=1.0,
            block_sizes=BlockSizes(block_q=3, block_k=16),
        )


def test_default_block_sizes_in_interpret_mode():
    rng = np.random.default_rng(8)
    args = make_inputs(rng, Shape(num_tokens=4, num_seqs=4), [1, 1, 1], [5, 30, 17])
    check(call(ragged_paged_attention, args, sm_scale=0.5, interpret=True), args, 0.5, 1e-3)


# ----- validation ---------------------------------------------------------------------------


def _valid():
    return make_inputs(np.random.default_rng(9), Shape(), [1], [3])


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(q=a["q"][:, :3]), "multiple of the number of KV heads"),
        (lambda a: a.update(q=a["q"][..., :16]), "head_dim of q"),
        (lambda a: a.update(v_pages=a["v_pages"][:-1]), "same shape"),
        (
            lambda a: a.update(
                k_pages=a["k_pages"].astype(jnp.bfloat16), v_pages=a["v_pages"].astype(jnp.bfloat16)
            ),
            "q's dtype",
        ),
        (
            lambda a: a.update(
                k_pages=a["k_pages"].astype(jnp.int8), v_pages=a["v_pages"].astype(jnp.int8)
            ),
            "need k_scales",
        ),
        (lambda a: a.update(k_scales=jnp.ones(a["k_pages"].shape[:3])), "only for int8"),
        (
            lambda a: a.update(
                kv_lens=a["kv_lens"].astype(jnp.int64)
                if jax.config.jax_enable_x64
                else a["kv_lens"].astype(jnp.int16)
            ),
            "kv_lens must be int32",
        ),
        (lambda a: a.update(cu_q_lens=a["cu_q_lens"][:-1]), "cu_q_lens must be"),
        (lambda a: a.update(block_tables=a["block_tables"][:-1]), "block_tables must be"),
        (lambda a: a.update(num_seqs=jnp.zeros((2,), jnp.int32)), "num_seqs must be"),
    ],
)
def test_validation_messages(change, match):
    args = _valid()
    change(args)
    with pytest.raises(ValueError, match=match):
        validate_inputs(
            args["q"],
            args["k_pages"],
            args["v_pages"],
            args["kv_lens"],
            args["block_tables"],
            args["cu_q_lens"],
            args["num_seqs"],
            args.get("k_scales"),
            args.get("v_scales"),
        )
    with pytest.raises(ValueError, match=match):
        call(ragged_paged_attention, args, sm_scale=1.0, interpret=True)


def test_int8_scales_shape_checked():
    args = make_inputs(np.random.default_rng(10), Shape(), [1], [3], quantized=True)
    args["v_scales"] = args["v_scales"][:, :4]
    with pytest.raises(ValueError, match="v_scales must have shape"):
        call(ragged_paged_attention_xla, args, sm_scale=1.0)


# ----- Triton lowering (runs on CPU: jaxlib ships the Triton dialect) ----------------------


@pytest.mark.parametrize(
    "num_tokens,num_seqs,head_dim,kv_dtype",
    [
        (64, 64, 128, jnp.bfloat16),  # GLM-4-9B decode, KV splits
        (600, 9, 80, jnp.bfloat16),  # prefill-heavy, padded head_dim
        (8, 8, 96, jnp.int8),  # int8 pages
        (40, 5, 64, jnp.float32),
    ],
)
def test_lowers_to_triton(num_tokens, num_seqs, head_dim, kv_dtype):
    pytest.importorskip("jaxlib.triton.dialect")
    sds = jax.ShapeDtypeStruct
    pages, page, kh, qh, per_seq = 256, 16, 2, 32, 64
    q_dtype = jnp.bfloat16 if kv_dtype == jnp.int8 else kv_dtype
    args = (
        sds((num_tokens, qh, head_dim), q_dtype),
        sds((pages, page, kh, head_dim), kv_dtype),
        sds((pages, page, kh, head_dim), kv_dtype),
        sds((num_seqs,), jnp.int32),
        sds((num_seqs, per_seq), jnp.int32),
        sds((num_seqs + 1,), jnp.int32),
        sds((1,), jnp.int32),
    )
    scales = {}
    if kv_dtype == jnp.int8:
        scales = dict(
            k_scales=sds((pages, page, kh), jnp.float32),
            v_scales=sds((pages, page, kh), jnp.float32),
        )
    lowered = ragged_paged_attention.trace(*args, sm_scale=0.1, **scales).lower(
        lowering_platforms=("cuda",)
    )
    assert "xla.gpu.triton" in lowered.as_text()


# ----- benchmark smoke test -----------------------------------------------------------------


def test_bench_quick_writes_json(tmp_path):
    from infer.bench_attention import BenchAttentionArgs, run_bench_attention

    args = BenchAttentionArgs(
        quick=True, batch_sizes=(2,), context_lens=(48,), dtypes=("int8",), out_dir=tmp_path
    )
    result = run_bench_attention(args)
    saved = json.loads((tmp_path / "attention.json").read_text())
    assert saved["results"] == json.loads(json.dumps(result["results"]))
    timed = [r for r in saved["results"] if "us_per_call" in r]
    assert {(r["mode"], r["dtype"]) for r in timed} == {("decode", "int8"), ("mixed", "int8")}
    assert all(r["impl"] == "xla" and r["us_per_call"] > 0 and r["bytes"] > 0 for r in timed)
    if jax.default_backend() != "gpu":
        assert all("GPU" in r["skipped"] for r in saved["results"] if r["impl"] != "xla")
    assert saved["copy_bandwidth_GBps"] > 0
