"""QAT: the policy wraps the matmuls, keeps the param tree, and its gradients are
straight-through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoglm_jax.config.quant import QuantConfig, QuantRule
from autoglm_jax.families import build_module, example_inputs
from autoglm_jax.nn.quant_formats import fake_quant_activations
from autoglm_jax.nn.quantized import weight_format
from autoglm_jax.quant import (
    dequantize,
    fake_quant,
    fake_quant_policy,
    layout_for,
    qat_model,
    quantize,
)

EQUATIONS = {
    "q_proj": "BTD,DNH->BTNH",
    "k_proj": "BTD,DNH->BTNH",
    "v_proj": "BTD,DNH->BTNH",
    "o_proj": "BTNH,NHD->BTD",
    "gate_up_proj": "BTD,DCF->BTCF",
    "down_proj": "BTF,FD->BTD",
}


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_straight_through_gradient_is_the_identity_inside_the_range(fmt):
    w = jax.random.normal(jax.random.key(0), (40, 3, 8))
    c = jax.random.normal(jax.random.key(1), w.shape)
    layout = layout_for("BTD,DNH->BTNH", w.shape, fmt, 16)
    grad = jax.grad(lambda w: jnp.sum(c * fake_quant(w, layout, 1.0)))(w)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(c))
    # With clipping, weights beyond the range get no gradient, the rest the identity's.
    grad = jax.grad(lambda w: jnp.sum(c * fake_quant(w, layout, 0.6)))(w)
    q, scale = quantize(w, layout, 0.6)
    step = np.asarray(dequantize(jnp.full_like(q, 0x11 if fmt == "int4" else 1), scale, layout))
    inside = np.abs(np.asarray(w) / step) < layout.qmax + 0.5  # rounds to at most qmax
    assert 0 < (~inside).sum() < inside.sum()
    np.testing.assert_array_equal(np.asarray(grad), np.where(inside, np.asarray(c), 0))
    # The forward value is the quantized one, not w.
    fwd = fake_quant(w, layout, 1.0)
    np.testing.assert_array_equal(
        np.asarray(fwd), np.asarray(dequantize(*quantize(w, layout), layout))
    )


def test_activation_fake_quant_rounds_per_token_with_identity_gradient():
    x = jax.random.normal(jax.random.key(2), (2, 5, 16)) * jnp.arange(1, 11.0).reshape(2, 5, 1)
    y = fake_quant_activations(x, (2,))
    scale = np.abs(np.asarray(x)).max(-1, keepdims=True) / 127
    np.testing.assert_allclose(np.asarray(y) / scale, np.round(np.asarray(y) / scale), atol=1e-4)
    assert (np.abs(np.asarray(y - x)) <= scale / 2 + 1e-6).all() and not np.allclose(y, x)
    c = jax.random.normal(jax.random.key(3), x.shape)
    grad = jax.grad(lambda x: jnp.sum(c * fake_quant_activations(x, (2,))))(x)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(c))


def test_rules_pick_layers_by_decoder_path():
    q = QuantConfig(
        weights="int4", rules=(QuantRule("lm_head", "none"), QuantRule(r"layers_1/mlp/", "int8"))
    )
    assert weight_format(q, ("layers_0", "mlp", "down_proj"), ()) == "int4"
    assert weight_format(q, ("layers_1", "mlp", "down_proj"), ()) == "int8"
    assert weight_format(q, ("lm_head",), ()) == "none"
    lm = ("language_model",)
    assert weight_format(q, ("language_model", "layers_1", "mlp", "gate_up_proj"), lm) == "int8"
    # Encoders and fusion are outside the decoder: never quantized, whatever the rules say.
    assert weight_format(q, ("visual", "blocks_0", "mlp", "down_proj"), lm) == "none"
    assert weight_format(q, ("audio_encoder", "layers_0", "self_attn", "q_proj"), lm) == "none"


def test_float_and_qat_share_one_param_tree(tiny):
    policy = fake_quant_policy(QuantConfig(weights="int4", activations="int8"), tiny.config)
    qat = build_module(tiny.config, policy)
    shapes = jax.eval_shape(lambda: qat.init(jax.random.key(0), *example_inputs(tiny.config)))
    want = jax.tree.map(lambda x: (x.shape, x.dtype), tiny.params)
    got = jax.tree.map(lambda x: (x.shape, x.dtype), shapes["params"])
    assert (
        jax.tree.map(
            lambda b: b.unbox() if hasattr(b, "unbox") else b,
            got,
            is_leaf=lambda b: hasattr(b, "unbox"),
        )
        == want
    )


def _fake_quantized_params(params, quant):
    """The float params with every selected kernel replaced by its fake-quantized value."""
    out = jax.tree.map(lambda x: x, params)
    for name, layer in out.items():
        if not name.startswith("layers_"):
            continue
        for block in ("self_attn", "mlp"):
            for proj, p in layer[block].items():
                k = p["kernel"]
                layout = layout_for(EQUATIONS[proj], k.shape, quant.weights, quant.group_size)
                p["kernel"] = dequantize(*quantize(k, layout), layout)
    return out


def test_qat_gradients_are_the_float_gradients_at_the_quantized_weights(tiny, ids):
    # int4 (grouped, packed); the int8 layout's STE is covered above.
    quant = QuantConfig(weights="int4", group_size=32)
    qat = qat_model(tiny, quant)

    def loss(module, params):
        logits = module.apply({"params": params}, ids)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 7])

    qat_grad = jax.jit(jax.value_and_grad(lambda p: loss(qat.module, p)))
    float_grad = jax.jit(jax.value_and_grad(lambda p: loss(tiny.module, p)))
    l_qat, g_qat = qat_grad(tiny.params)
    fq = jax.jit(lambda p: _fake_quantized_params(p, quant))(tiny.params)
    l_float, g_float = float_grad(fq)
    np.testing.assert_allclose(l_qat, l_float, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_qat), jax.tree.leaves(g_float)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # And it is not the float model's gradient (the quantization is real).
    _, g_plain = float_grad(tiny.params)
    diff = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(g_qat), jax.tree.leaves(g_plain))
    )
    assert diff > 1e-6


def test_policies_do_not_stack(tiny, exported):
    quant = QuantConfig(weights="int8")
    with pytest.raises(TypeError, match="cannot wrap another policy"):
        fake_quant_policy(quant, tiny.config, inner=fake_quant_policy(quant, tiny.config))
    with pytest.raises(ValueError, match="already stored quantized"):
        qat_model(exported(quant), quant)
    with pytest.raises(ValueError, match="already has a dot_general"):
        qat_model(qat_model(tiny, quant), quant)
