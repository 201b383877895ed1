"""Tests of autoglm_jax.training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import autoglm_jax as ag
from autoglm_jax.families import get_family


def np_init(cfg, seed=0):
    """A model with random weights drawn by numpy (normal(0, 0.02) matrices, unit norm scales,
    zero biases), shaped by `jax.eval_shape`: no XLA compilation, which `ag.init` needs and
    which takes several seconds on the shared test machine."""
    cfg = ag.load_config(cfg) if isinstance(cfg, str) else cfg
    arch = get_family(cfg.model_type, "test")
    module = arch.build(cfg)
    abstract = nn.unbox(ag.abstract_params(module, arch.init_args(cfg)))
    rng = np.random.default_rng(seed)

    def one(path, x):
        name = str(path[-1].key)
        if name == "scale":
            v = np.ones(x.shape)
        elif name == "bias":
            v = np.zeros(x.shape)
        else:
            v = rng.normal(0.0, 0.02, x.shape)
        return jnp.asarray(v, x.dtype)

    params = jax.tree_util.tree_map_with_path(one, abstract)
    return ag.Model(cfg, params, module, random_init=True)
