"""The engine against the dense no-cache forward, plus its sampling and bookkeeping promises."""

import dataclasses

import jax
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.reference import dense_greedy


def _tp_config():
    cfg = ag.load_config("tiny")
    return cfg.replace(text=cfg.text.replace(num_heads=8, num_kv_heads=4, d_model=64, ffw_dim=48))


def _workload(n, seed=0, shared=40, max_len=300):
    """Random prompts of 1..max_len tokens; half start with a shared system prefix."""
    rng = np.random.RandomState(seed)
    prefix = list(rng.randint(0, 490, shared))
    prompts = []
    for i in range(n):
        length = int(rng.randint(1, max_len + 1))
        body = list(rng.randint(0, 490, length))
        prompts.append((prefix + body)[:max_len] if i % 2 else body)
    return prompts


def _check_against_dense(model, config, prompts, max_tokens, mesh=None):
    engine = Engine(model, config, mesh=mesh)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    stats = engine.stats()
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == dense_greedy(model, prompt, max_tokens), len(prompt)
    assert stats["free_pages"] == stats["num_pages"]
    return stats


CONCURRENT = EngineConfig(
    max_num_seqs=16,
    max_num_batched_tokens=128,
    page_size=4,
    max_model_len=320,
    num_pages=160,
    enable_prefix_caching=True,
)


@pytest.mark.slow
def test_64_concurrent_requests_equal_dense_greedy():
    model = ag.init("tiny", seed=0)
    stats = _check_against_dense(model, CONCURRENT, _workload(64), max_tokens=8)
    assert stats["num_preemptions"] > 0, "the pool was meant to force preemption"
    assert stats["prefix_cache_hits"] > 0, "shared prefixes were meant to hit the cache"


@pytest.mark.parametrize("tensor", [2, 4])
def test_tensor_parallel_equals_dense_greedy(tensor):
    model = ag.init(_tp_config(), seed=0)
    mesh = ag.make_mesh(tensor=tensor)
    sharded = ag.init(_tp_config(), seed=0, mesh=mesh, rules="tp")
    q = sharded.params["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec[1] == "tensor"
    engine_cfg = dataclasses.replace(CONCURRENT, num_pages=80)
    prompts = _workload(12, seed=tensor, max_len=120)
    engine = Engine(sharded, engine_cfg, mesh=mesh)
    assert engine.runner.caches[0].k_pages.sharding.spec[2] == "tensor"
    outs = engine.generate(prompts, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == dense_greedy(model, prompt, 6)


def test_int8_kv_cache_halves_bytes_and_keeps_greedy_agreement():
    model = ag.init("tiny", seed=0)
    prompts = _workload(16, seed=3, max_len=60)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    results = {}
    for dtype in ("float32", "bfloat16", "int8"):
        engine = Engine(model, dataclasses.replace(CONCURRENT, kv_cache_dtype=dtype))
        cache = engine.runner.caches[0]
        per_token = sum(x.nbytes for x in jax.tree.leaves(cache)) / (
            cache.num_pages * cache.page_size
        )
        results[dtype] = (per_token, [o.token_ids for o in engine.generate(prompts, params)])
    # Measured per-token bytes of one layer's K+V (scales included).
    assert results["int8"][0] <= 0.5 * results["bfloat16"][0] + 2 * 4 * 2  # 2 f32 scales/head
    assert results["int8"][0] <= 0.35 * results["float32"][0]
    # At GLM-4-9B's head shape (2 KV heads of 128) the f32 scales cost 3%: int8 is about half.
    from autoglm_jax.kernels import KVCache

    glm = {d: KVCache.allocate(4, 16, 2, 128, dtype=d) for d in ("bfloat16", "int8")}
    ratio = sum(x.nbytes for x in jax.tree.leaves(glm["int8"])) / sum(
        x.nbytes for x in jax.tree.leaves(glm["bfloat16"])
    )
    print(f"int8/bf16 KV bytes per token at head_dim 128: {ratio:.4f}")
    assert ratio <= 0.52
    ref = np.concatenate(results["float32"][1])
    agree = (np.concatenate(results["int8"][1]) == ref).mean()
    print(f"int8 KV greedy agreement with the float cache: {agree:.4f}")
    # Measured 0.94 and 0.95 for init seeds 0 and 1 (bf16 KV: 0.97, 1.0): near-flat random
    # logits let one rounding flip the rest of a sequence. A wrong scale or dequantization
    # agrees on almost nothing.
    assert agree >= 0.9


def test_same_seed_same_text_whatever_the_batch():
    model = ag.init("tiny", seed=1)
    target = [5, 17, 230, 41, 9]
    params = SamplingParams(
        max_tokens=10,
        temperature=0.9,
        top_p=0.9,
        top_k=50,
        seed=1234,
        frequency_penalty=0.3,
        ignore_eos=True,
    )
    alone = Engine(model, CONCURRENT).generate([target], params)[0].token_ids
    others = _workload(7, seed=9, max_len=40)
    noisy = SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)
    mixed = Engine(model, CONCURRENT).generate(
        others[:3] + [target] + others[3:], [noisy] * 3 + [params] + [noisy] * 4
    )
    assert mixed[3].token_ids == alone
    other_seed = dataclasses.replace(params, seed=99)
    assert Engine(model, CONCURRENT).generate([target], other_seed)[0].token_ids != alone


def test_compilations_bounded_by_buckets():
    model = ag.init("tiny", seed=0)
    cfg = EngineConfig(
        max_num_seqs=16, max_num_batched_tokens=64, page_size=8, max_model_len=128, num_pages=200
    )
    engine = Engine(model, cfg)
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(0, 490, rng.randint(1, 100))) for _ in range(200)]
    params = [
        SamplingParams(
            max_tokens=int(rng.randint(1, 6)),
            temperature=float(rng.rand()),
            seed=i,
            ignore_eos=True,
        )
        for i in range(200)
    ]
    engine.generate(prompts, params)
    # The mixed program of each bucket, the decode program of each decode bucket.
    assert engine.stats()["compilations"] <= len(engine.runner.step_shapes)
    assert engine.runner._step._cache_size() <= len(engine.runner.step_shapes)


def test_stop_strings_max_tokens_and_abort():
    from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer

    model = dataclasses.replace(
        ag.init("tiny", seed=0), tokenizer=Tokenizer.from_dir(TINY_TOKENIZER_DIR)
    )
    engine = Engine(model, CONCURRENT)
    free = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    full = engine.generate("hello world", free)[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 12
    assert full.text == model.tokenizer.decode(full.token_ids, skip_special_tokens=True)
    if len(full.text) > 4:
        stop = full.text[2:4]
        out = engine.generate("hello world", dataclasses.replace(free, stop=[stop]))[0]
        assert out.finish_reason == "stop" and out.text == full.text[: full.text.index(stop)]
    deltas = list(engine.stream("hello world", free))
    assert "".join(d.text for d in deltas) == full.text and deltas[-1].finished
    rid = engine.add_request("hello", free)
    engine.step()
    assert engine.abort(rid)
    assert engine.stats()["free_pages"] == engine.stats()["num_pages"]
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request(list(range(400)), free)
    with pytest.raises(ValueError, match="temperature"):
        engine.add_request("x", SamplingParams(temperature=-1.0))
