"""The train step: overfitting, sharded == single device, accumulation, freezing, the
non-finite guard, mixed precision, and the loss functions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from autoglm_jax.training import losses
from autoglm_jax.training import step as st
from autoglm_jax.training.data import make_dataset
from autoglm_jax.training.recipe import DataRecipe, DistillRecipe, OptimRecipe

from . import np_init


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


def _batch(tok, batch_size=4, seq_len=48, seed=0):
    ds, _ = make_dataset(
        DataRecipe(seq_len=seq_len, batch_size=batch_size, prefetch=0, seed=seed), tok
    )
    return next(iter(ds))


def _cfg(**kw):
    cfg = ag.load_config("tiny")
    return cfg.replace(text=cfg.text.replace(**kw)) if kw else cfg


@pytest.fixture(scope="module")
def tiny():
    return np_init("tiny", seed=0)


@pytest.fixture(scope="module")
def one():
    """A 1-layer tiny model: compiles fastest (the machine is shared)."""
    return np_init(_cfg(num_layers=1), seed=0)


def _fresh(model):
    return jax.tree.map(jnp.copy, model.params)


def test_overfits_a_fixed_batch(tok, tiny):
    batch = st.put_batch(_batch(tok), None)
    optim = OptimRecipe(lr=1e-2, warmup_steps=10, weight_decay=0.0)
    tx, _ = st.make_optimizer(optim, 150, tiny.params)
    state, _ = st.init_state(_fresh(tiny), tx, 0)
    step = st.make_train_step(tiny.module, tx)
    losses_seen = []
    for _ in range(150):
        state, m = step(state, batch)
        losses_seen.append(float(m["loss"]))
    assert losses_seen[0] > 5.0
    assert min(losses_seen) < 0.05, losses_seen[::10]
    assert int(state.step) == 150


def _run(
    module, params, batches, mesh=None, rules="fsdp", optim=OptimRecipe(lr=1e-3, warmup_steps=2)
):
    tx, _ = st.make_optimizer(optim, 10, params)
    state, shardings = st.init_state(params, tx, 0, mesh)
    step = st.make_train_step(module, tx, shardings, mesh=mesh, rules=rules)
    bsh = st.batch_shardings(mesh, rules) if mesh is not None else None
    out = []
    for b in batches:
        state, m = step(state, st.put_batch(b, bsh))
        out.append(float(m["loss"]))
    return state, out


@pytest.fixture(scope="module")
def sharding_case(tok):
    # sizes divisible by 4 so every rule really shards (the tiny preset's are prime-ish)
    cfg = _cfg(
        d_model=64,
        num_heads=8,
        num_kv_heads=4,
        head_dim=8,
        ffw_dim=48,
        vocab_size=528,
        num_layers=2,
    )
    model = np_init(cfg, seed=0)
    batches = [_batch(tok, seed=s) for s in range(5)]
    return model, batches, _run(model.module, _fresh(model), batches)


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 simulated devices")
@pytest.mark.parametrize("rules, shape", [("fsdp", dict(fsdp=4)), ("tp", dict(tensor=4))])
def test_sharded_steps_equal_single_device(sharding_case, rules, shape):
    model, batches, (want_state, want) = sharding_case
    mesh = ag.make_mesh(**shape)
    boxed = ag.abstract_params(model.module, (jnp.zeros((1, 2), jnp.int32),))
    params = jax.tree.map(
        jax.device_put, _fresh(model), nn.unbox(ag.param_shardings(boxed, mesh, rules))
    )
    q = params["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert len({s.device for s in q.addressable_shards}) == 4
    assert q.addressable_shards[0].data.size == q.size // 4, "weights should be split 4 ways"
    got_state, got = _run(model.module, params, batches, mesh, rules)
    # Adam moments follow their parameter's sharding
    q_mu = [x for x in jax.tree.leaves(got_state.opt_state) if x.shape == q.shape]
    assert q_mu and all(x.sharding.spec == q.sharding.spec for x in q_mu)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.fixture(scope="module")
def first_step(tok, one):
    """One fp32 AdamW step of the 1-layer model on a fixed batch: (batch, state, loss)."""
    b = _batch(tok)
    state, losses_ = _run(one.module, _fresh(one), [b], optim=OptimRecipe(lr=1e-3, warmup_steps=0))
    return b, state, losses_[0]


def test_gradient_accumulation_updates_every_k(one, first_step):
    b, s1, _ = first_step
    acc = OptimRecipe(lr=1e-3, warmup_steps=0, grad_accum=2)
    tx, _ = st.make_optimizer(acc, 10, one.params)
    state, _ = st.init_state(_fresh(one), tx, 0)
    step = st.make_train_step(one.module, tx, grad_accum=2)
    state, _ = step(state, st.put_batch(b, None))
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(one.params)):
        np.testing.assert_array_equal(x, y)  # no update after the first micro-batch
    state, _ = step(state, st.put_batch(b, None))
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(x, y, atol=1e-7)  # mean of (g, g) == one step on g


def test_freeze_mask_trains_only_matching_paths(tok, one):
    tiny = one
    optim = OptimRecipe(lr=1e-2, warmup_steps=0, trainable=("layers_0/mlp/*", "norm/*"))
    mask = st.trainable_mask(tiny.params, optim.trainable)
    assert st.count_params(tiny.params, mask) == (
        st.count_params(tiny.params["layers_0"]["mlp"]) + tiny.config.text.d_model
    )
    tx, _ = st.make_optimizer(optim, 10, tiny.params)
    state, _ = st.init_state(_fresh(tiny), tx, 0)
    step = st.make_train_step(tiny.module, tx, trainable=mask)
    for s in range(2):
        state, _ = step(state, st.put_batch(_batch(tok, seed=s), None))
    flat_new = jax.tree_util.tree_leaves_with_path(state.params)
    flat_old = jax.tree.leaves(tiny.params)
    for (path, new), old, train in zip(flat_new, flat_old, jax.tree.leaves(mask)):
        changed = not np.array_equal(new, old)
        assert changed == train, st.path_str(path)
    # no Adam moments are kept for frozen parameters
    n_state = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert n_state < 3 * st.count_params(tiny.params, mask)
    with pytest.raises(ValueError, match="matches no parameter"):
        st.trainable_mask(tiny.params, ("fusion/*",))


def test_weight_decay_skips_norms_and_biases(one):
    tiny = one
    mask = {
        st.path_str(p): m
        for p, m in jax.tree_util.tree_leaves_with_path(st.decay_mask(tiny.params))
    }
    assert mask["layers_0/self_attn/q_proj/kernel"] and mask["embed_tokens/embedding"]
    assert not mask["layers_0/self_attn/q_proj/bias"]
    assert not mask["layers_0/input_layernorm/scale"] and not mask["norm/scale"]


class _Poisoned(nn.Module):
    """The tiny decoder, but the logits are NaN when the batch contains token id 7."""

    inner: nn.Module

    def __call__(self, ids, **kw):
        logits = self.inner(ids, **kw)
        return logits + jnp.where(jnp.any(ids == 7), jnp.nan, 0.0)


def test_nonfinite_step_is_skipped(tok, one):
    tiny = one
    module = _Poisoned(tiny.module)
    params = {"inner": _fresh(tiny)}
    tx, _ = st.make_optimizer(OptimRecipe(lr=1e-2, warmup_steps=0), 10, params)
    state, _ = st.init_state(params, tx, 0)
    step = st.make_train_step(module, tx)
    good = _batch(tok)
    bad = {**good, "inputs": np.where(good["inputs"] == good["inputs"][0, 5], 7, good["inputs"])}
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state, m = step(state, st.put_batch(bad, None))
    assert m["finite"] == 0 and not np.isfinite(m["loss"])
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    for x, y in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(x, y)
    state, m = step(state, st.put_batch(good, None))
    assert m["finite"] == 1 and np.isfinite(m["loss"])
    assert not np.array_equal(jax.tree.leaves(state.params)[0], jax.tree.leaves(before[0])[0])


def test_bf16_compute_with_fp32_master_weights(one, first_step):
    from autoglm_jax.nn.glm import GlmDecoder

    b, _, fp32_loss = first_step
    module = GlmDecoder(one.config.with_dtypes("float32", "bfloat16").text)
    tx, _ = st.make_optimizer(OptimRecipe(lr=1e-3, warmup_steps=0), 10, one.params)
    state, _ = st.init_state(_fresh(one), tx, 0)
    state, met = st.make_train_step(module, tx)(state, st.put_batch(b, None))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert abs(float(met["loss"]) - fp32_loss) < 0.05 and float(met["loss"]) != fp32_loss


# --- losses ---------------------------------------------------------------------------------------


def test_losses_against_numpy():
    rng = np.random.RandomState(0)
    s, t = rng.randn(2, 5, 11).astype(np.float32), rng.randn(2, 5, 11).astype(np.float32)
    tgt = rng.randint(0, 11, (2, 5))
    mask = np.array([[1, 1, 0, 0, 1], [0, 1, 1, 1, 0]], np.float32)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce = -np.take_along_axis(log_softmax(s), tgt[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        losses.cross_entropy(s, tgt, mask), (ce * mask).sum() / mask.sum(), rtol=1e-5
    )
    T = 2.0
    pt, ps = log_softmax(t / T), log_softmax(s / T)
    kl = (np.exp(pt) * (pt - ps)).sum(-1)
    np.testing.assert_allclose(
        losses.kl_divergence(t, s, mask, T), (kl * mask).sum() / mask.sum(), rtol=1e-5
    )
    assert float(losses.kl_divergence(s, s, mask, T)) == pytest.approx(0.0, abs=1e-6)
    h1, h2 = rng.randn(2, 5, 3), rng.randn(2, 5, 3)
    mse = ((h1 - h2) ** 2).mean(-1)
    np.testing.assert_allclose(
        losses.hidden_mse([h1], [h2], mask), (mse * mask).sum() / mask.sum(), rtol=1e-5
    )
    total, parts = losses.distill_loss(
        s,
        t,
        tgt,
        mask,
        alpha=0.3,
        temperature=T,
        beta=0.5,
        student_hidden=[h1],
        teacher_hidden=[h2],
    )
    np.testing.assert_allclose(
        total, 0.3 * T * T * parts["kl"] + 0.7 * parts["ce"] + 0.5 * parts["hidden_mse"], rtol=1e-6
    )
    assert float(losses.cross_entropy(s, tgt, np.zeros_like(mask))) == 0.0
    # exact match per segment: row 0 has segments 1 (ok) and 2 (one wrong token)
    logits = np.eye(11)[tgt] * 5
    logits[0, 4] = np.eye(11)[(tgt[0, 4] + 1) % 11] * 5
    seg = np.array([[1, 1, 1, 2, 2], [1, 1, 1, 1, 1]])
    assert float(losses.sequence_accuracy(logits, tgt, mask, seg)) == pytest.approx(2 / 3)


def test_distill_step_uses_the_teacher(tok, tiny, one):
    student = one
    batch = st.put_batch(_batch(tok), None)
    tx, _ = st.make_optimizer(OptimRecipe(lr=1e-3, warmup_steps=0), 10, student.params)
    d = DistillRecipe(alpha=0.5, temperature=2.0, beta=0.1, layer_map=((0, 2),))
    step = st.make_train_step(student.module, tx, distill=d, teacher_module=tiny.module)
    state, _ = st.init_state(_fresh(student), tx, 0)
    _, m = step(state, batch, tiny.params)
    kw = dict(
        positions=batch["positions"], segment_ids=batch["segment_ids"], mutable=["intermediates"]
    )
    logits, s_inter = student.module.apply({"params": student.params}, batch["inputs"], **kw)
    t_logits, inter = tiny.module.apply({"params": tiny.params}, batch["inputs"], **kw)
    mask = batch["loss_mask"]
    np.testing.assert_allclose(
        m["kl"], losses.kl_divergence(t_logits, logits, mask, 2.0), rtol=1e-5
    )
    np.testing.assert_allclose(
        m["hidden_mse"],
        losses.hidden_mse(
            [s_inter["intermediates"]["hidden_states"][0]],
            [inter["intermediates"]["hidden_states"][2]],
            mask,
        ),
        rtol=1e-5,
    )
    assert float(m["loss"]) == pytest.approx(
        2.0 * float(m["kl"]) + 0.5 * float(m["ce"]) + 0.1 * float(m["hidden_mse"]), rel=1e-5
    )
