"""Export changes storage, not numbers; compressed checkpoints save, load and stay small."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.config import TextConfig
from autoglm_jax.config.quant import QuantConfig, QuantRule
from autoglm_jax.quant import export_quantized, qat_model, weight_bytes


@pytest.mark.parametrize(
    "quant",
    [
        QuantConfig(weights="int8"),
        QuantConfig(weights="int4", group_size=32),
        QuantConfig(
            weights="int4",
            group_size=32,
            activations="int8",
            rules=(QuantRule("lm_head", "int8"), QuantRule("layers_1/self_attn", "none")),
        ),
    ],
    ids=["int8", "int4", "int4-act8-rules"],
)
def test_exported_logits_equal_the_qat_forward(tiny, ids, exported, logits, quant):
    qat = qat_model(tiny, quant)
    compressed = exported(quant)
    want = logits(qat.module, tiny.params, ids)
    got = logits(compressed.module, compressed.params, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    # The quantization is real: the float model gives other logits.
    float_logits = logits(tiny.module, tiny.params, ids)
    assert float(jnp.abs(got - float_logits).max()) > 1e-3
    # Integer kernels where the rules say so, float elsewhere.
    p = compressed.params
    head = p["lm_head"]["kernel"].dtype
    assert head == (jnp.int8 if quant.rules[0].weights == "int8" else jnp.float32)
    attn1 = p["layers_1"]["self_attn"]["q_proj"]
    assert (attn1["kernel"].dtype == jnp.float32) == (len(quant.rules) > 1)
    assert p["layers_0"]["mlp"]["down_proj"]["kernel"].dtype == jnp.int8
    assert "scale" in p["layers_0"]["mlp"]["down_proj"]
    assert p["embed_tokens"]["embedding"].dtype == jnp.float32
    assert compressed.config.text.quant == quant


def test_save_load_roundtrip_is_exact(ids, exported, logits, tmp_path):
    compressed = exported(QuantConfig(weights="int4", group_size=32))
    ag.save(compressed, tmp_path / "c")
    loaded = ag.load(tmp_path / "c")
    assert loaded.config == compressed.config
    same = jax.tree.map(
        lambda a, b: a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all()),
        compressed.params,
        loaded.params,
    )
    assert all(jax.tree.leaves(same))
    np.testing.assert_array_equal(
        np.asarray(logits(loaded.module, loaded.params, ids)),
        np.asarray(logits(compressed.module, compressed.params, ids)),
    )
    with pytest.raises(ValueError, match="already quantized"):
        export_quantized(loaded, QuantConfig())


def test_random_init_of_a_compressed_config(logits):
    cfg = ag.load_config("tiny")
    cfg = cfg.replace(text=cfg.text.replace(num_layers=1, quant=QuantConfig(weights="int4")))
    m = ag.init(cfg, seed=0)
    q = m.params["layers_0"]["mlp"]["gate_up_proj"]
    assert q["kernel"].dtype == jnp.int8 and q["kernel"].shape == (36, 2, 46)
    assert bool((q["kernel"] != 0).any()) and bool((q["scale"] > 0).all())
    assert bool(jnp.isfinite(logits(m.module, m.params, jnp.zeros((1, 3), jnp.int32))).all())


# A config whose widths make bytes meaningful (d_model 256, head rows 256, ffw 512).
WIDE = TextConfig(
    vocab_size=512,
    d_model=256,
    ffw_dim=512,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
)


def test_loaded_weights_bytes(tmp_path):
    """int8 <= 52% and int4 <= 28% of the bf16 bytes (scales included), on loaded params."""
    model = ag.init(ag.ModelConfig(model_type="glm", text=WIDE), seed=0)
    for fmt, limit in (("int8", 0.52), ("int4", 0.28)):
        ag.save(export_quantized(model, QuantConfig(weights=fmt)), tmp_path / fmt)
        for dtype in (jnp.bfloat16, jnp.float32):
            loaded = ag.load(tmp_path / fmt, dtype=dtype)
            assert loaded.params["layers_1"]["mlp"]["down_proj"]["kernel"].dtype == jnp.int8
            b = weight_bytes(loaded)
            ratio = b["quantized"] / b["quantized_bf16"]
            print(
                f"{fmt} loaded as {jnp.dtype(dtype).name}: quantized matmuls {ratio:.4f} of "
                f"bf16, whole model {b['total'] / b['bf16']:.4f} of bf16"
            )
            assert b["quantized_bf16"] == 2 * 2 * (256 * 256 * 2 + 256 * 128 * 2 + 3 * 256 * 512)
            assert ratio <= limit


def test_abstract_bytes_equal_the_loaded_params(tmp_path, tiny):
    from autoglm_jax.quant import abstract_bytes, tree_bytes

    small = export_quantized(tiny, QuantConfig(weights="int4", group_size=32))
    ag.save(small, tmp_path / "q")
    loaded = ag.load(tmp_path / "q", dtype=jnp.bfloat16)
    assert abstract_bytes(loaded.config) == tree_bytes(loaded.params)
    assert abstract_bytes(ag.load(tmp_path / "q").config) == tree_bytes(small.params)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("tied", [False, True], ids=["head", "tied"])
def test_an_embedding_table_a_rule_names_is_stored_quantized(fmt, tied, ids, logits, tmp_path):
    cfg = ag.load_config("tiny")
    cfg = cfg.replace(text=cfg.text.replace(tie_word_embeddings=tied))
    model = ag.init(cfg, seed=0)
    quant = QuantConfig(weights="int8", group_size=32, rules=(QuantRule("embed_tokens", fmt),))
    compressed = export_quantized(model, quant)
    table = compressed.params["embed_tokens"]
    vocab, width = cfg.text.vocab_size, cfg.text.d_model
    assert table["embedding"].dtype == jnp.int8
    if fmt == "int8":  # one scale per token row
        assert table["embedding"].shape == (vocab, width) and table["scale"].shape == (vocab, 1)
    else:  # two values a byte, a scale per group of at most 32 along a row
        assert table["embedding"].shape == (vocab, -(-width // 2))
        assert table["scale"].shape == (vocab, -(-width // 32))
    # Export changes storage, not numbers: the QAT forward (fake-quantized table) agrees, and
    # the gathered rows are the dequantized table's rows.
    want = logits(qat_model(model, quant).module, model.params, ids)
    got = logits(compressed.module, compressed.params, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    assert float(jnp.abs(got - logits(model.module, model.params, ids)).max()) > 1e-4
    ag.save(compressed, tmp_path / "q")
    loaded = ag.load(tmp_path / "q")
    assert loaded.params["embed_tokens"]["embedding"].dtype == jnp.int8
    np.testing.assert_array_equal(
        np.asarray(logits(loaded.module, loaded.params, ids)), np.asarray(got)
    )
    b = weight_bytes(loaded)
    assert b["quantized_bf16"] >= 2 * vocab * width  # the table counts as quantized
    stored = vocab * width * (1 if fmt == "int8" else 0.5) + table["scale"].size * 4
    assert b["quantized"] >= stored


def test_tables_stay_float_unless_a_rule_names_them(tiny, exported):
    # QuantConfig's default weights apply to matmuls only: checkpoints written before tables
    # could be quantized load unchanged.
    assert QuantConfig().table_format_for("embed_tokens") == "none"
    compressed = exported(QuantConfig(weights="int8"))
    assert compressed.params["embed_tokens"]["embedding"].dtype == jnp.float32
    assert "scale" not in compressed.params["embed_tokens"]
