"""A step's metadata travels as one int32 array and comes back bit for bit inside the jitted
step; steps of one shape share a layout (so one program), and the step program has no host
callbacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.packing import pack, unpack
from autoglm_jax.engine.runner import StepShape
from autoglm_jax.engine.sampling import SamplingArrays
from autoglm_jax.engine.step_plan import SeqStep

CONFIG = EngineConfig(
    max_num_seqs=8, max_num_batched_tokens=32, page_size=4, max_model_len=64, num_pages=40
)


def _step(runner, lengths, temperature):
    seqs = [
        SeqStep(
            token_ids=np.arange(n, dtype=np.int32) + 3 * i,
            positions=np.arange(kv - n, kv, dtype=np.int32),
            slot=i,
            pages=np.arange(1 + 4 * i, 1 + 4 * i + -(-kv // 4), dtype=np.int32),
            kv_len=kv,
            samples=True,
            prev_index=i - 1,
        )
        for i, (n, kv) in enumerate(lengths)
    ]
    params = [
        SamplingParams(temperature=temperature, top_p=0.3 + 0.1 * i) for i in range(len(seqs))
    ]
    sampling = SamplingArrays.build(
        params, [2**32 - 1 - i for i in range(len(seqs))], [5] * len(seqs), 8
    )
    return runner.build_inputs(seqs, sampling)


def test_pack_round_trips_every_leaf_bit_for_bit():
    runner = Engine(ag.init("tiny", seed=0), CONFIG).runner
    x = _step(runner, [(3, 7), (1, 9), (5, 5)], temperature=0.37)
    words, on_device, layout = pack(x)
    assert words.dtype == np.int32 and words.ndim == 1 and on_device == ()
    back = jax.jit(unpack, static_argnums=2)(jnp.asarray(words), on_device, layout)
    assert jax.tree.structure(back) == jax.tree.structure(x)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(x)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), want)
    # Another step of the same token bucket: a new layout would mean a new program.
    other = _step(runner, [(1, 30)], temperature=1.0)
    assert pack(other)[2] == layout
    assert pack(_step(runner, [(20, 20)], temperature=1.0))[2] != layout  # bucket 32


def test_unpackable_dtype_is_named():
    with pytest.raises(TypeError, match="int8"):
        pack({"a": np.zeros((2,), np.int8)})


def test_one_step_program_per_shape_without_host_callbacks():
    engine = Engine(ag.init("tiny", seed=0), CONFIG)
    engine.warmup()
    engine.generate([[1, 2, 3], list(range(20))], SamplingParams(max_tokens=4, ignore_eos=True))
    assert engine.stats()["compilations_after_warmup"] == 0
    runner = engine.runner
    lowered, _ = runner._lower(runner._dummy_inputs(StepShape(16, False)))
    text = lowered.as_text()
    assert "callback" not in text.lower()
    # The host-built metadata is one argument: an int32 vector; nothing else is host-built.
    args = lowered.args_info[0]
    words, on_device = args[3], args[4]
    assert words.dtype == jnp.int32 and len(words.shape) == 1 and words.shape[0] > 16
    assert on_device == ()  # a text model has no image rows
