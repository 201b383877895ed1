"""Shared tiny models for the quantization tests (built once per session)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.quant import export_quantized

_EXPORTS = {}


@pytest.fixture(scope="session")
def tiny():
    return ag.init("tiny", seed=0)


@pytest.fixture(scope="session")
def ids():
    return jnp.asarray(np.random.RandomState(0).randint(0, 500, (2, 13)), jnp.int32)


@pytest.fixture(scope="session")
def exported(tiny):
    """exported(quant): the tiny model exported with `quant` (cached per QuantConfig)."""

    def get(quant):
        if quant not in _EXPORTS:
            _EXPORTS[quant] = export_quantized(tiny, quant)
        return _EXPORTS[quant]

    return get


@pytest.fixture(scope="session")
def logits():
    """logits(module, params, ids): module.apply, jitted (an eager apply compiles every op on
    first use, slower on CPU)."""
    return lambda module, params, x: jax.jit(lambda p, y: module.apply({"params": p}, y))(params, x)
