"""Structured pruning: importance, FLOP targets, masked == sliced, GQA, save/load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.compress import (
    PruneConfig,
    apply_plan,
    decoder_flops,
    full_plan,
    mask_params,
    measure_importance,
    plan_pruning,
    prune_model,
    pruned_text_config,
)
from autoglm_jax.config import ConfigError
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.reference import dense_greedy


@pytest.fixture(scope="module")
def model():
    return ag.init("tiny", seed=0)


@pytest.fixture(scope="module")
def batches():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 500, (4, 24)).astype(np.int32) for _ in range(2)]


@pytest.fixture(scope="module")
def importance(model, batches):
    return measure_importance(model, batches)


def _logits(m, ids, params=None):
    params = m.params if params is None else params
    return jax.jit(lambda p, x: m.module.apply({"params": p}, x))(params, ids)


def test_ratio_zero_is_the_identity(model, batches):
    pruned, report = prune_model(model, batches, PruneConfig(flops_reduction=0.0))
    assert pruned.config == model.config
    assert report.reduction == 0.0
    same = jax.tree.map(
        lambda a, b: a.shape == b.shape and bool((a == b).all()), model.params, pruned.params
    )
    assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("target", [0.2, 0.35, 0.5])
def test_flop_reduction_within_two_points(model, importance, allocation, target):
    text = model.config.text
    for heads in (True, False) if target <= 0.2 else (True,):  # tiny's FFN: 35% of the FLOPs
        plan = plan_pruning(text, importance, PruneConfig(target, heads, allocation))
        pruned = pruned_text_config(text, plan)
        achieved = 1 - decoder_flops(pruned) / decoder_flops(text)
        assert abs(achieved - target) <= 0.02, (allocation, heads, achieved)
        g = [pruned.num_heads_at(i) for i in range(text.num_layers)]
        assert all(n % text.num_kv_heads == 0 for n in g)
        if not heads:
            assert g == [text.num_heads] * text.num_layers


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_masked_model_equals_sliced_model(model, importance, batches, allocation):
    plan = plan_pruning(model.config.text, importance, PruneConfig(0.35, allocation=allocation))
    sliced = apply_plan(model, plan)
    text = sliced.config.text
    if allocation == "global":  # widths differ per layer: the per-layer config fields are used
        assert text.layer_ffw_dims is not None and len(set(text.layer_ffw_dims)) > 1
    assert sliced.num_params < model.num_params
    assert text.num_params == sliced.num_params
    ids = jnp.asarray(batches[0])
    masked = _logits(model, ids, mask_params(model.params, model.config.text, plan))
    np.testing.assert_allclose(np.asarray(_logits(sliced, ids)), np.asarray(masked), atol=1e-5)
    assert float(jnp.abs(masked - _logits(model, ids)).max()) > 1e-3  # something was removed


def test_importance_ranks_dead_units_first(model, batches):
    # Silence head 4 of layer 1 (o_proj rows) and neuron 7 of layer 2 (down_proj row).
    p = jax.tree.map(lambda x: x, model.params)
    p["layers_1"]["self_attn"]["o_proj"]["kernel"] = (
        p["layers_1"]["self_attn"]["o_proj"]["kernel"].at[4].set(0)
    )
    p["layers_2"]["mlp"]["down_proj"]["kernel"] = (
        p["layers_2"]["mlp"]["down_proj"]["kernel"].at[7].set(0)
    )
    dead = model.__class__(model.config, p, model.module)
    imp = measure_importance(dead, batches)
    assert imp.heads[1][4] == 0 and (np.delete(imp.heads[1], 4) > 0).all()
    assert imp.neurons[2][7] == 0 and (np.delete(imp.neurons[2], 7) > 0).all()
    plan = plan_pruning(model.config.text, imp, PruneConfig(0.2))
    assert 4 not in plan.keep_heads[1] and 7 not in plan.keep_neurons[2]


def test_padding_tokens_do_not_count(model, batches):
    ids = batches[0]
    seg = np.ones_like(ids)
    seg[:, 16:] = 0
    padded = measure_importance(model, [{"inputs": ids, "segment_ids": seg}])
    cut = measure_importance(model, [ids[:, :16]])
    assert padded.tokens == cut.tokens == 4 * 16
    for a, b in zip(padded.heads + padded.neurons, cut.heads + cut.neurons):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_pruned_model_saves_loads_and_serves(model, batches, tmp_path):
    pruned, report = prune_model(
        model, batches, PruneConfig(0.35, allocation="global", calibration_batches=1)
    )
    assert report.tokens == batches[0].size
    assert len(set(report.heads)) > 1 or len(set(report.ffw)) > 1
    ag.save(pruned, tmp_path / "p")
    loaded = ag.load(tmp_path / "p")
    assert loaded.config == pruned.config
    assert all(
        jax.tree.leaves(
            jax.tree.map(lambda a, b: bool((a == b).all()), pruned.params, loaded.params)
        )
    )
    prompts = [list(map(int, batches[1][0, :n])) for n in (5, 19)]
    cfg = EngineConfig(
        max_num_seqs=2, max_num_batched_tokens=32, page_size=4, max_model_len=48, num_pages=32
    )
    outs = Engine(loaded, cfg).generate(
        prompts, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    )
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == dense_greedy(loaded, prompt, 6)


def test_plans_and_configs_are_checked(model):
    text = model.config.text
    plan = full_plan(text)
    bad = plan.__class__(((0, 1, 3, 4, 5),) + plan.keep_heads[1:], plan.keep_neurons)
    with pytest.raises(ValueError, match="KV group"):
        apply_plan(model, bad)
    with pytest.raises(ConfigError, match="layer_ffw_dims"):
        text.replace(layer_ffw_dims=(4, 4))
    with pytest.raises(ConfigError, match="layer_num_heads"):
        text.replace(layer_num_heads=(6, 3, 6))
    with pytest.raises(ConfigError, match="flops_reduction"):
        PruneConfig(flops_reduction=1.0)
    imp = measure_importance(model, [np.zeros((1, 4), np.int32)])
    with pytest.raises(ValueError, match="cannot remove 50%"):
        plan_pruning(text, imp, PruneConfig(0.5, prune_heads=False))


def test_uniform_widths_need_no_calibration(model, importance):
    from autoglm_jax.compress import uniform_pruned_config

    cfg = PruneConfig(flops_reduction=0.35)
    want = pruned_text_config(model.config.text, plan_pruning(model.config.text, importance, cfg))
    assert uniform_pruned_config(model.config.text, cfg) == want
    with pytest.raises(ValueError, match="uniform"):
        uniform_pruned_config(model.config.text, cfg.replace(allocation="global"))
