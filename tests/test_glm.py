"""The GLM decoder against Hugging Face transformers, plus self-consistency checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from tests.hf_fixtures import CASES, hf_logits, save_hf_model


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def hf_case(request, tmp_path_factory):
    case = request.param
    directory = tmp_path_factory.mktemp(case.name)
    model = save_hf_model(case, directory)
    return case, directory, model


def _ids(case, batch=2, length=13, seed=0):
    return np.random.RandomState(seed).randint(0, case.vocab_size, (batch, length))


def _apply(m, ids, **kw):
    return np.asarray(m.module.apply({"params": m.params}, jnp.asarray(ids), **kw))


def test_logits_match_transformers_fp32(hf_case):
    case, directory, model = hf_case
    m = ag.load(directory)
    ids = _ids(case)
    err = np.abs(_apply(m, ids) - hf_logits(model, ids)).max()
    assert err < 1e-4, err


def test_bf16_is_finite_and_close(hf_case):
    case, directory, model = hf_case
    m = ag.load(directory, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(m.params))
    ids = _ids(case)
    out = _apply(m, ids)
    ref = hf_logits(model, ids)
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 0.05


def test_hub_spelling_config_loads_the_same(hf_case, tmp_path):
    case, directory, model = hf_case
    cfg = json.loads((directory / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["partial_rotary_factor"] = rope["partial_rotary_factor"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    ids = _ids(case)
    np.testing.assert_array_equal(_apply(ag.load(tmp_path), ids), _apply(ag.load(directory), ids))


def test_sharded_checkpoint_loads_the_same(tmp_path):
    case = CASES[0]
    model = save_hf_model(case, tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ids = _ids(case)
    assert np.abs(_apply(ag.load(tmp_path), ids) - hf_logits(model, ids)).max() < 1e-4


def test_export_hf_loads_in_transformers(hf_case, tmp_path):
    import transformers as tf

    case, directory, model = hf_case
    m = ag.load(directory)
    ag.export_hf(m, tmp_path / "out", max_shard_bytes=30_000)  # force several shards
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = _ids(case)
    np.testing.assert_allclose(hf_logits(back, ids), hf_logits(model, ids), atol=1e-6)


def test_save_load_roundtrip_is_exact(tmp_path):
    case = CASES[3]
    src = tmp_path / "hf"
    save_hf_model(case, src)
    m = ag.load(src)
    ag.save(m, tmp_path / "native")
    back = ag.load(tmp_path / "native")
    assert back.config == m.config
    for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Saving over an existing checkpoint replaces it whole.
    ag.save(back, tmp_path / "native")
    assert ag.load(tmp_path / "native").config == m.config


def test_save_and_load_take_relative_paths(tmp_path, monkeypatch):
    # Orbax refuses relative paths; users write ag.load("checkpoints/...")
    monkeypatch.chdir(tmp_path)
    m = ag.init("tiny", seed=0)
    ag.save(m, "ckpt/model")
    back = ag.load("ckpt/model")
    for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_saved_models_keep_their_tokenizer_after_its_folder_is_gone(tmp_path):
    # A training run whose init checkpoint was moved mid-run once saved a model without a
    # tokenizer: saving must write the files read at load time, from memory.
    import dataclasses
    import shutil

    from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer

    src = tmp_path / "tok"
    shutil.copytree(TINY_TOKENIZER_DIR, src)
    original = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    m = dataclasses.replace(ag.init("tiny", seed=0), tokenizer=Tokenizer.from_dir(src))
    shutil.rmtree(src)
    ag.save(m, tmp_path / "native")
    ag.export_hf(m, tmp_path / "hf")
    for out in (tmp_path / "native", tmp_path / "hf"):
        assert (out / "tokenizer.json").read_bytes() == original["tokenizer.json"]
        back = Tokenizer.from_dir(out)
        assert back.encode("Tap Wi-Fi") == m.tokenizer.encode("Tap Wi-Fi")


def test_causality():
    m = ag.init("tiny", seed=1)
    ids = np.random.RandomState(3).randint(0, 500, (1, 17))
    changed = ids.copy()
    changed[0, 11:] = (changed[0, 11:] + 7) % 500
    a, b = _apply(m, ids), _apply(m, changed)
    np.testing.assert_array_equal(a[:, :11], b[:, :11])
    assert np.abs(a[:, 11:] - b[:, 11:]).max() > 1e-3


def test_segments_are_independent():
    """Packing two sequences with segment ids equals running each alone."""
    m = ag.init("tiny", seed=2)
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 500, (1, 7)), rng.randint(0, 500, (1, 5))
    packed = np.concatenate([x, y], axis=1)
    seg = np.array([[1] * 7 + [2] * 5])
    pos = np.array([list(range(7)) + list(range(5))])
    out = _apply(m, packed, positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg))
    np.testing.assert_allclose(out[:, :7], _apply(m, x), atol=1e-5)
    np.testing.assert_allclose(out[:, 7:], _apply(m, y), atol=1e-5)


def test_mrope_positions_with_equal_rows_equal_1d_rope():
    cfg = ag.load_config("tiny")
    cfg = cfg.replace(text=cfg.text.replace(mrope_section=(1, 2, 1)))
    m = ag.init(cfg, seed=0)
    ids = np.random.RandomState(1).randint(0, 500, (2, 9))
    pos = np.broadcast_to(np.arange(9), (2, 9))
    one_d = _apply(m, ids, positions=jnp.asarray(pos))
    three_d = _apply(m, ids, positions=jnp.asarray(np.stack([pos] * 3)))
    np.testing.assert_allclose(one_d, three_d, atol=1e-6)
    # Different rows move different frequencies: the output changes.
    moved = np.stack([pos, pos * 2, pos])  # a constant shift would cancel (rope is relative)
    assert np.abs(_apply(m, ids, positions=jnp.asarray(moved)) - one_d).max() > 1e-4


def test_eval_shape_glm_4_9b_parameter_count():
    cfg = ag.load_config("glm-4-9b")
    module = ag.GlmDecoder(cfg.text)
    shapes = ag.abstract_params(module, (jnp.zeros((1, 2), jnp.int32),))
    import flax.linen as nn

    assert sum(x.size for x in jax.tree.leaves(nn.unbox(shapes))) == 9_399_951_360
