"""Sharded forward passes equal the single-device one; weights really are split."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 simulated devices")


def _cfg():
    # Sizes divisible by the mesh axes so every rule shards (the tiny preset has prime-ish ones).
    cfg = ag.load_config("tiny")
    return cfg.replace(
        text=cfg.text.replace(
            d_model=64, num_heads=8, num_kv_heads=4, head_dim=8, ffw_dim=48, vocab_size=128
        )
    )


@pytest.fixture(scope="module")
def reference():
    m = ag.init(_cfg(), seed=0)
    ids = np.random.RandomState(0).randint(0, 128, (4, 10))
    return m, ids, np.asarray(m.module.apply({"params": m.params}, jnp.asarray(ids)))


def _attn_mlp_bytes(params):
    per_dev: dict = {}
    for layer in (v for k, v in params.items() if k.startswith("layers_")):
        for part in (layer["self_attn"], layer["mlp"]):
            for d, b in ag.per_device_bytes(part).items():
                per_dev[d] = per_dev.get(d, 0) + b
    return per_dev


@pytest.mark.parametrize(
    "rules, shape",
    [
        ("tp", dict(data=2, tensor=2)),
        ("tp", dict(tensor=4)),
        ("fsdp", dict(fsdp=4, tensor=2)),
        ("dp", dict(data=4)),
    ],
)
def test_sharded_logits_equal_single_device(reference, rules, shape):
    m, ids, want = reference
    mesh = ag.make_mesh(**shape)
    boxed = ag.abstract_params(m.module, (jnp.zeros((1, 2), jnp.int32),))
    shardings = ag.param_shardings(boxed, mesh, rules)
    params = jax.tree.map(jax.device_put, m.params, nn.unbox(shardings))
    fwd = jax.jit(lambda p, x: m.module.apply({"params": p}, x))
    got = np.asarray(fwd(params, jnp.asarray(ids)))
    np.testing.assert_allclose(got, want, atol=1e-5)

    tensor = shape.get("tensor", 1) * (shape.get("fsdp", 1) if rules == "fsdp" else 1)
    full = sum(
        x.nbytes
        for layer in (v for k, v in m.params.items() if k.startswith("layers_"))
        for part in (layer["self_attn"], layer["mlp"])
        for x in jax.tree.leaves(part)
    )
    per_dev = _attn_mlp_bytes(params)
    assert len(per_dev) == mesh.size
    for nbytes in per_dev.values():
        assert abs(nbytes - full / tensor) <= 0.05 * full / tensor, (nbytes, full, tensor)


def test_load_places_params_in_rule_shardings(tmp_path):
    m = ag.init(_cfg(), seed=0)
    ag.save(m, tmp_path / "ckpt")
    ag.export_hf(m, tmp_path / "hf")
    mesh = ag.make_mesh(tensor=2, fsdp=2)
    for path in (tmp_path / "ckpt", tmp_path / "hf"):
        sharded = ag.load(path, mesh=mesh, rules="fsdp")
        q = sharded.params["layers_0"]["self_attn"]["q_proj"]["kernel"]
        assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
        ids = jnp.asarray(np.random.RandomState(1).randint(0, 128, (2, 6)))
        np.testing.assert_allclose(
            np.asarray(jax.jit(lambda p, x: m.module.apply({"params": p}, x))(sharded.params, ids)),
            np.asarray(m.module.apply({"params": m.params}, ids)),
            atol=1e-5,
        )


def test_indivisible_dims_are_replicated():
    from autoglm_jax.sharding import RULES, spec_for

    mesh = ag.make_mesh(tensor=4)
    # 2 KV heads cannot split 4 ways: replicated rather than an error.
    assert spec_for(
        ("embed", "kv_heads", "head_dim"), (64, 2, 8), mesh, RULES["tp"]
    ) == jax.sharding.PartitionSpec(None, None, None)
    assert spec_for(
        ("embed", "heads", "head_dim"), (64, 8, 8), mesh, RULES["tp"]
    ) == jax.sharding.PartitionSpec(None, "tensor", None)


@pytest.mark.parametrize("shape", [dict(tensor=2, fsdp=2), dict(tensor=4), dict(fsdp=4)])
def test_default_rules_follow_the_mesh(tmp_path_factory, shape):
    """ag.load(dir, mesh=mesh) without rules: every mesh axis of size > 1 splits the weights
    (fsdp along embed, tensor by head, neuron and vocab), so each of the 4 devices holds about
    a quarter of them."""
    path = tmp_path_factory.getbasetemp() / "default_rules_ckpt"
    if not path.exists():
        ag.save(ag.init(_cfg(), seed=0), path)
    m = ag.load(path, mesh=ag.make_mesh(**shape))
    total = sum(x.nbytes for x in jax.tree.leaves(m.params))
    per_dev = ag.per_device_bytes(m.params)
    assert len(per_dev) == 4
    for nbytes in per_dev.values():  # norms and biases stay whole: a little over a quarter
        assert nbytes <= 0.3 * total, (shape, nbytes, total)
