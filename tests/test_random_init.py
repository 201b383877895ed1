"""ag.init draws repeated layers together (checkpoint.random_init): same tree and
distributions as module.init, distinct layers, a seed that reproduces, and a program that
does not grow with depth."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.checkpoint.random_init import grouped_init
from autoglm_jax.config.quant import QuantConfig
from autoglm_jax.families import get_family


def _module(cfg):
    family = get_family(cfg.model_type, "test")
    return family.build(cfg, None), family.example_inputs(cfg)


@pytest.mark.parametrize("preset", ["tiny", "tiny-mm"])
def test_grouped_init_matches_module_init_in_tree_and_distribution(preset):
    cfg = ag.load_config(preset)
    module, args = _module(cfg)
    draw = grouped_init(module, args)
    assert draw is not None  # every preset's initializers group
    key = jax.random.key(3)
    got = jax.jit(draw)(key)
    module_init = jax.jit(lambda k: nn.unbox(module.init(k, *args)["params"]))
    want, other = module_init(key), module_init(jax.random.key(4))
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert shapes(got) == shapes(want)
    leaves = zip(*(jax.tree.leaves(t) for t in (got, want, other)))
    for path, (g, w, o) in zip(jax.tree_util.tree_flatten_with_path(got)[0], leaves):
        path, (g, w, o) = path[0], (np.asarray(x, np.float64) for x in (g, w, o))
        if np.array_equal(w, o):  # ones, zeros, sinusoids: no randomness, the same values
            np.testing.assert_array_equal(g, w, err_msg=str(path))
        elif w.size >= 2000:  # random: other values, the same spread
            assert not np.array_equal(g, w), path
            assert abs(g.std() / w.std() - 1) < 0.1, path
            assert abs(g.mean() - w.mean()) < 0.1 * w.std(), path


def test_layers_differ_and_a_seed_reproduces():
    a, b, c = (ag.init("tiny", seed=s) for s in (0, 0, 1))
    same = jax.tree.map(lambda x, y: bool((x == y).all()), a.params, b.params)
    assert all(jax.tree.leaves(same))
    q = lambda m, i: np.asarray(m.params[f"layers_{i}"]["self_attn"]["q_proj"]["kernel"])  # noqa: E731
    assert not np.array_equal(q(a, 0), q(a, 1))  # each param its own key
    assert not np.array_equal(q(a, 0), q(c, 0))


def test_the_init_program_does_not_grow_with_depth():
    cfg = ag.load_config("tiny")

    def generator_calls(num_layers: int, grouped: bool) -> int:
        module, args = _module(cfg.replace(text=cfg.text.replace(num_layers=num_layers)))
        draw = grouped_init(module, args) if grouped else lambda k: module.init(k, *args)
        text = jax.jit(draw).lower(jax.random.key(0)).as_text()
        return len(re.findall(r"call @_?threefry", text))

    assert generator_calls(2, True) == generator_calls(12, True) > 0
    # module.init calls the generator per param: the count that grouping removes.
    assert generator_calls(12, False) > generator_calls(2, False) + 40


def test_initializers_closing_over_arrays_fall_back_to_module_init():
    # A compressed config quantizes a freshly drawn kernel inside its initializer.
    cfg = ag.load_config("tiny")
    cfg = cfg.replace(text=cfg.text.replace(num_layers=1, quant=QuantConfig(weights="int8")))
    assert grouped_init(*_module(cfg)) is None
    m = ag.init(cfg, seed=0)
    assert m.params["layers_0"]["mlp"]["down_proj"]["kernel"].dtype == jnp.int8
