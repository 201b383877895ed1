"""Async scheduling: the engine dispatches step n+1 before it fetches step n's tokens, feeding
them back on the device. It must give exactly what waiting for each step gives: the same
tokens, logprobs, stops and finish reasons, through preemption, prefix hits and aborts."""

import dataclasses

import numpy as np

import autoglm_jax as ag
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.scheduler import PENDING
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer

# A small pool and token budget: long prompts are chunked and running requests get preempted.
CONFIG = EngineConfig(
    max_num_seqs=8,
    max_num_batched_tokens=48,
    page_size=4,
    max_model_len=160,
    num_pages=40,
    enable_prefix_caching=True,
)
SYNC = dataclasses.replace(CONFIG, async_scheduling=False)


def _requests():
    """Prompts and settings that exercise every way a request ends or samples."""
    rng = np.random.RandomState(0)
    prefix = list(rng.randint(0, 490, 24))
    prompts = [
        (prefix if i % 2 else []) + list(rng.randint(0, 490, rng.randint(1, 60))) for i in range(14)
    ]
    prompts.append("hello world")
    free = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    params = [
        free,
        dataclasses.replace(free, max_tokens=1),
        dataclasses.replace(free, temperature=0.9, top_p=0.9, top_k=40, seed=7),
        dataclasses.replace(free, temperature=1.0, seed=3, frequency_penalty=0.5),
        dataclasses.replace(free, repetition_penalty=1.3, presence_penalty=0.4),
        dataclasses.replace(free, logprobs=3),
        dataclasses.replace(free, temperature=0.7, seed=11, logprobs=2, max_tokens=20),
        dataclasses.replace(free, ignore_eos=False, temperature=1.0, seed=5),
    ]
    params = [params[i % len(params)] for i in range(len(prompts) - 1)]
    params.append(free)
    return prompts, params


def _generate(model, config, prompts, params):
    engine = Engine(model, config)
    outs = engine.generate(prompts, params)
    return engine, [o.outputs[0] for o in outs]


def test_async_equals_sync_tokens_logprobs_and_stops():
    model = dataclasses.replace(
        ag.init("tiny", seed=0), tokenizer=Tokenizer.from_dir(TINY_TOKENIZER_DIR)
    )
    prompts, params = _requests()
    # Stop tokens and stop strings taken from the sync run, so that some requests stop early.
    _, first = _generate(model, SYNC, prompts, params)
    for i in (0, 8):
        params[i] = dataclasses.replace(params[i], stop_token_ids=[first[i].token_ids[4]])
    text = first[-1].text
    params[-1] = dataclasses.replace(params[-1], stop=[text[3:5]] if len(text) > 5 else [])

    sync_engine, sync = _generate(model, SYNC, prompts, params)
    async_engine, pipelined = _generate(model, CONFIG, prompts, params)
    assert sync_engine.stats()["num_preemptions"] > 0, "the pool was meant to force preemption"
    assert async_engine.stats()["num_preemptions"] > 0
    assert async_engine.stats()["prefix_cache_hits"] > 0
    for i, (a, b) in enumerate(zip(sync, pipelined)):
        assert b.token_ids == a.token_ids, i
        assert PENDING not in b.token_ids
        assert (b.text, b.finish_reason, b.stop_reason) == (a.text, a.finish_reason, a.stop_reason)
        if a.logprobs is not None:
            np.testing.assert_allclose(b.token_logprobs, a.token_logprobs, rtol=1e-5)
            assert [list(d) for d in b.logprobs] == [list(d) for d in a.logprobs]
    assert [o.finish_reason for o in sync].count("stop") >= 2
    stats = async_engine.stats()
    assert stats["free_pages"] == stats["num_pages"]
    assert stats["num_generated_tokens"] == sum(len(o.token_ids) for o in pipelined)


def test_the_next_step_is_dispatched_before_the_last_one_is_fetched():
    model = ag.init("tiny", seed=0)
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    events = {}
    for name, config in (("async", CONFIG), ("sync", SYNC)):
        engine = Engine(model, config)
        log = events[name] = []
        dispatch, take_in = engine.runner.dispatch, engine._take_in
        engine.runner.dispatch = lambda *a, _f=dispatch, _log=log: _log.append("D") or _f(*a)
        engine._take_in = lambda s, _f=take_in, _log=log: _log.append("F") or _f(s)
        rid = engine.add_request([3, 1, 4, 1, 5], params)
        first = engine.step()
        # Async: the first step's token is still on the device after its step() returns.
        assert bool(first) is (name == "sync")
        while engine.has_unfinished():
            engine.step()
        assert len(engine.output(rid).token_ids) == 5
    # Five samples, five steps either way: a request at max_tokens is not scheduled again.
    assert events["sync"] == ["D", "F"] * 5
    assert events["async"] == ["D"] + ["D", "F"] * 4 + ["F"]


def test_abort_with_a_sample_in_flight_keeps_only_fetched_tokens():
    model = ag.init("tiny", seed=0)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompt = [9, 8, 7, 6, 5, 4]
    full = Engine(model, SYNC).generate([prompt], params)[0].token_ids
    engine = Engine(model, CONFIG)
    rid = engine.add_request(prompt, params)
    other = engine.add_request([1, 2, 3], params)
    for _ in range(4):
        engine.step()
    assert engine.scheduler.running[0].num_pending == 1
    assert engine.abort(rid)
    out = engine.output(rid)
    assert out.finish_reason == "abort" and PENDING not in out.token_ids
    assert out.token_ids == full[: len(out.token_ids)] and len(out.token_ids) == 3
    while engine.has_unfinished():
        engine.step()
    assert len(engine.output(other).token_ids) == 12
    stats = engine.stats()
    assert stats["free_pages"] == stats["num_pages"]
