"""The engine runs compressed weights: token for token with the dense reference, and with the
int8 KV cache on top."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from autoglm_jax.config.quant import QuantConfig
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.reference import dense_greedy
from autoglm_jax.quant import qat_model

CONFIG = EngineConfig(
    max_num_seqs=4,
    max_num_batched_tokens=64,
    page_size=4,
    max_model_len=64,
    num_pages=64,
    enable_prefix_caching=True,
)
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(5)
    shared = list(rng.randint(0, 490, 9))
    return [
        list(rng.randint(0, 490, n)) if i % 2 else shared + list(rng.randint(0, 490, n))
        for i, n in enumerate((3, 17, 30, 8))
    ]


@pytest.fixture(scope="module")
def int8_model(exported):
    return exported(QuantConfig(weights="int8"))


def test_engine_greedy_equals_dense_greedy_with_int8_weights(int8_model, prompts):
    assert int8_model.params["layers_0"]["self_attn"]["q_proj"]["kernel"].dtype == jnp.int8
    outs = Engine(int8_model, CONFIG).generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == dense_greedy(int8_model, prompt, 8)


def test_int8_kv_cache_composes_with_compressed_weights(tiny, int8_model, prompts):
    # Export changes storage, not numbers: with the same int8 KV cache, the compressed model
    # and the QAT (fake-quantized float) model generate the same tokens.
    kv8 = dataclasses.replace(CONFIG, kv_cache_dtype="int8")
    engine = Engine(int8_model, kv8)
    assert engine.runner.caches[0].k_pages.dtype == jnp.int8
    compressed = [o.token_ids for o in engine.generate(prompts, GREEDY)]
    qat = qat_model(tiny, QuantConfig(weights="int8"))
    fake = [o.token_ids for o in Engine(qat, kv8).generate(prompts, GREEDY)]
    assert compressed == fake
    assert engine.stats()["free_pages"] == engine.stats()["num_pages"]
