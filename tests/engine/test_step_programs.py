"""The runner's step programs: on the Pallas path a pure decode step runs the decode program,
any other step the mixed one; the XLA path has one program per bucket. `Engine.warmup()`
compiles every one, so a text workload compiles nothing after it."""

import dataclasses

import numpy as np

import autoglm_jax as ag
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.reference import dense_greedy
from autoglm_jax.engine.runner import StepShape
from autoglm_jax.engine.sampling import SamplingArrays
from autoglm_jax.engine.step_plan import SeqStep

# 24 slots over buckets 16, 32, 64: the decode programs are 16 and 32 (the bucket holding 24
# tokens), so decode steps of 17..24 sequences also pad past the sequence slots (T > S).
CONFIG = EngineConfig(
    max_num_seqs=24, max_num_batched_tokens=64, page_size=4, max_model_len=64, num_pages=200
)
PALLAS = dataclasses.replace(CONFIG, attention_backend="pallas")


def _seq(n: int, kv_len: int, slot: int) -> SeqStep:
    pages = np.arange(1 + 4 * slot, 1 + 4 * slot + -(-kv_len // 4), dtype=np.int32)
    return SeqStep(
        token_ids=np.full((n,), 7, np.int32),
        positions=np.arange(kv_len - n, kv_len, dtype=np.int32),
        slot=slot,
        pages=pages,
        kv_len=kv_len,
        samples=True,
    )


def test_runner_picks_the_decode_program_only_when_every_sequence_has_one_token():
    runner = Engine(ag.init("tiny", seed=0), PALLAS).runner
    assert runner.buckets == [16, 32, 64] and runner.decode_buckets == [16, 32]
    assert runner.step_shapes == [
        StepShape(16, False),
        StepShape(32, False),
        StepShape(64, False),
        StepShape(16, True),
        StepShape(32, True),
    ]
    sampling = SamplingArrays.build([], [], [], CONFIG.max_num_seqs)

    # 20 one-token rows (a one-token prompt among decodes counts too): the decode program of
    # bucket 32, sequence i owning token row i.
    decodes = [_seq(1, 5 + i, i) for i in range(20)]
    x = runner.build_inputs(decodes, sampling)
    assert x.attention.decode_only and x.input_ids.shape == (32,)
    np.testing.assert_array_equal(x.attention.cu_q_lens[:21], np.arange(21))
    one_token_prompt = runner.build_inputs([_seq(1, 1, 0), _seq(1, 9, 1)], sampling)
    assert one_token_prompt.attention.decode_only

    # One row with two tokens makes the step mixed.
    x = runner.build_inputs([_seq(1, 5, 0), _seq(2, 6, 1)], sampling)
    assert not x.attention.decode_only and x.input_ids.shape == (16,)

    # The XLA path has no decode kernel: one program per bucket, decode steps included.
    xla = Engine(ag.init("tiny", seed=0), CONFIG).runner
    assert xla.decode_buckets == [] and xla.step_shapes == [
        StepShape(t, False) for t in (16, 32, 64)
    ]
    assert not xla.build_inputs(decodes, sampling).attention.decode_only


def _run_staggered_against_dense(engine: Engine, arrivals: dict[int, list[tuple[list[int], int]]]):
    """Add each (prompt, max_tokens) at its step index and step to the end; each request's
    greedy tokens must equal the dense no-cache forward's."""
    requests, step = [], 0
    while step <= max(arrivals) or engine.has_unfinished():
        for prompt, max_tokens in arrivals.get(step, []):
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            requests.append((engine.add_request(prompt, params), prompt, max_tokens))
        engine.step()
        step += 1
    for rid, prompt, max_tokens in requests:
        out = engine.output(rid).token_ids
        assert out == dense_greedy(engine.model, prompt, max_tokens), len(prompt)


def test_warmup_covers_every_step_of_a_mixed_text_workload():
    engine = Engine(ag.init("tiny", seed=0), CONFIG)
    runner = engine.runner
    compiled = engine.warmup()
    assert compiled == len(runner.step_shapes) + 1  # + the penalty priming program
    assert engine.stats()["compilations_after_warmup"] == 0

    met: list[StepShape] = []
    build_inputs = runner.build_inputs

    def recording(seqs, sampling):
        x = build_inputs(seqs, sampling)
        met.append(StepShape(int(x.input_ids.shape[0]), x.attention.decode_only))
        return x

    runner.build_inputs = recording

    rng = np.random.RandomState(0)

    def request(length: int, max_tokens: int) -> tuple[list[int], int]:
        return list(rng.randint(0, 490, length)), max_tokens

    # 18 short prompts at once (18 decodes: bucket 32, then fewer as they finish), then
    # longer prompts mid-run (mixed steps) and a one-token prompt among the decodes.
    arrivals = {
        0: [request(1 + i % 7, 3 + i % 10) for i in range(18)],
        4: [request(40, 6), request(1, 5), request(23, 9)],
        9: [request(11, 4), request(1, 7)],
    }
    _run_staggered_against_dense(engine, arrivals)

    assert {StepShape(16, False), StepShape(32, False)} <= set(met), met
    assert set(met) <= set(runner.step_shapes)
    stats = engine.stats()
    assert stats["compilations_after_warmup"] == 0, met
    assert stats["free_pages"] == stats["num_pages"]


def test_pallas_decode_program_in_interpret_mode_equals_dense_greedy():
    """The Pallas path end to end on CPU: mixed steps through the ragged kernel, decode steps
    through the decode kernel (interpret mode), token for token against the dense forward."""
    cfg = EngineConfig(
        max_num_seqs=4,
        max_num_batched_tokens=16,
        page_size=4,
        max_model_len=32,
        num_pages=40,
        attention_backend="pallas",
    )
    engine = Engine(ag.init("tiny", seed=0), cfg)
    engine.runner.interpret = True  # no GPU here: run the Pallas kernels in interpret mode
    assert engine.warmup() == 2 + 1  # the mixed and the decode program of bucket 16; priming
    rng = np.random.RandomState(1)
    arrivals = {0: [(list(rng.randint(0, 490, n)), 5) for n in (3, 9)], 2: [([17], 4)]}
    _run_staggered_against_dense(engine, arrivals)
    assert {("step", 16, True), ("step", 16, False)} <= engine.runner.shapes_compiled
    assert engine.stats()["compilations_after_warmup"] == 0
