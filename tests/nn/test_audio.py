"""The Whisper encoder against transformers' WhisperModel, its tensor maps, and its config."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoglm_jax.config import ConfigError
from autoglm_jax.config.audio import WHISPER_TINY, AudioConfig
from autoglm_jax.families import whisper_keys
from autoglm_jax.families.keymap import params_from_state_dict, state_dict_from_params
from autoglm_jax.families.whisper import audio_config_from_hf
from autoglm_jax.nn.audio import WhisperEncoder, encode_long, sinusoids

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

TINY_HF = dict(
    d_model=36,
    encoder_layers=2,
    encoder_attention_heads=3,
    encoder_ffn_dim=23,
    num_mel_bins=80,
    max_source_positions=1500,
    decoder_layers=1,
    decoder_attention_heads=3,
    decoder_ffn_dim=23,
    vocab_size=97,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=3,
)


def _perturbed(model):
    # Random init leaves norms at 1 and biases at 0, and its std 0.02 weights keep activations
    # so small that e.g. tanh-approximate GELU would pass: perturb norms and biases and give the
    # matrices unit-gain (1/sqrt(fan_in)) weights so every such slip shows above 1e-4.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.ndim >= 2 and "embed" not in name:
                p.normal_(0.0, p[0].numel() ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory):
    """A tiny random WhisperForConditionalGeneration saved with save_pretrained."""
    torch.manual_seed(0)
    model = _perturbed(tf.WhisperForConditionalGeneration(tf.WhisperConfig(**TINY_HF)))
    directory = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(directory)
    from safetensors.numpy import load_file

    state = load_file(str(directory / "model.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    return model, state, config


@pytest.fixture(scope="module")
def converted(hf_whisper):
    _, state, config_json = hf_whisper
    cfg = audio_config_from_hf(config_json, source="whisper/config.json")
    maps = whisper_keys.hf_tensor_maps(cfg)
    return cfg, maps, params_from_state_dict(maps, state)


@pytest.fixture(scope="module")
def encoder_fn(converted):
    """One jitted fp32 encoder shared by the tests (compiled once per input shape)."""
    cfg, _, _ = converted
    return jax.jit(WhisperEncoder(cfg).apply)


def test_config_from_hf_reads_encoder_fields(hf_whisper):
    _, _, config_json = hf_whisper
    cfg = audio_config_from_hf(config_json)
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.ffw_dim) == (36, 2, 3, 23)
    assert (cfg.num_mel_bins, cfg.max_source_positions, cfg.num_frames) == (80, 1500, 3000)
    assert cfg.window_seconds == 30.0 and cfg.max_windows == 4


def test_last_hidden_state_matches_transformers(hf_whisper, converted, encoder_fn):
    model, _, _ = hf_whisper
    _, _, params = converted
    x = np.random.default_rng(0).standard_normal((2, 80, 3000)).astype(np.float32)
    with torch.no_grad():
        ref = model.model.encoder(torch.from_numpy(x)).last_hidden_state.numpy()
    out = encoder_fn({"params": params}, x)
    assert out.shape == (2, 1500, 36)
    err = float(np.abs(np.asarray(out) - ref).max())
    assert err < 1e-4, err


def test_every_field_the_encoder_reads(tmp_path):
    """Non-default values of every field WhisperEncoder reads: sizes, 16 mel bins, 20 source
    positions (40 frames), and scale_embedding=True, which the encoder stores but never applies
    (its embed_scale is unused in forward), so it must not change our output either."""
    torch.manual_seed(3)
    config = tf.WhisperConfig(
        **{
            **TINY_HF,
            "d_model": 40,
            "encoder_layers": 3,
            "encoder_attention_heads": 5,
            "decoder_attention_heads": 5,
            "encoder_ffn_dim": 31,
            "num_mel_bins": 16,
            "max_source_positions": 20,
            "scale_embedding": True,
            "activation_function": "gelu",
        }
    )
    model = _perturbed(tf.WhisperForConditionalGeneration(config))
    model.save_pretrained(tmp_path)
    cfg = audio_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.ffw_dim) == (40, 3, 5, 31)
    assert (cfg.num_mel_bins, cfg.max_source_positions, cfg.num_frames) == (16, 20, 40)
    from safetensors.numpy import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    params = params_from_state_dict(whisper_keys.hf_tensor_maps(cfg), state)
    x = np.random.default_rng(1).standard_normal((2, 16, 40)).astype(np.float32)
    with torch.no_grad():
        ref = model.model.encoder(torch.from_numpy(x)).last_hidden_state.numpy()
    out = np.asarray(WhisperEncoder(cfg).apply({"params": params}, x))
    assert out.shape == ref.shape == (2, 20, 40)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_tensor_maps_cover_checkpoint_and_round_trip(hf_whisper, converted):
    _, state, _ = hf_whisper
    _, maps, params = converted
    ours = [m.hf_key for m in maps]
    assert len(ours) == len(set(ours))
    ignored = {k for k in state if whisper_keys.is_ignored(k)}
    assert ignored and all(k.startswith("model.decoder.") for k in ignored)
    assert set(ours) == set(state) - ignored
    back = state_dict_from_params(maps, params)
    for key in ours:
        assert back[key].shape == state[key].shape, key
        np.testing.assert_array_equal(back[key], state[key], err_msg=key)


def test_params_match_module_tree(converted):
    cfg, _, params = converted
    abstract = jax.eval_shape(
        WhisperEncoder(cfg).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 80, 3000), jnp.float32),
    )
    expected = jax.tree.map(lambda s: s.shape, nn.unbox(abstract["params"]))
    assert jax.tree.map(np.shape, params) == expected


def test_bare_whisper_model_prefix():
    torch.manual_seed(1)
    model = tf.WhisperModel(tf.WhisperConfig(**TINY_HF))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = audio_config_from_hf(model.config.to_dict())
    maps = whisper_keys.hf_tensor_maps(cfg, prefix="encoder.")
    ignored = {k for k in state if whisper_keys.is_ignored(k)}
    assert {m.hf_key for m in maps} == set(state) - ignored
    assert all(k.startswith("decoder.") for k in ignored)


def test_position_init_is_whisper_sinusoids():
    ref = tf.models.whisper.modeling_whisper.sinusoids(1500, 36).numpy()
    np.testing.assert_allclose(sinusoids(1500, 36), ref, atol=2e-4)  # torch computes in fp32
    cfg = AudioConfig(d_model=36, num_layers=1, num_heads=3, ffw_dim=23)
    # unsafe_rbg: threefry init compiles several times slower on CPU; the values do not matter.
    key = jax.random.key(0, impl="unsafe_rbg")
    params = jax.jit(WhisperEncoder(cfg).init)(key, jnp.zeros((1, 80, 3000)))["params"]
    np.testing.assert_allclose(nn.unbox(params)["embed_positions"], ref, atol=2e-4)


def test_encode_long_concatenates_windows(converted, encoder_fn):
    cfg, _, params = converted
    rng = np.random.default_rng(1)
    windows = rng.standard_normal((2, 80, 3000)).astype(np.float32)
    singles = np.asarray(encoder_fn({"params": params}, windows))  # each window on its own row
    out = np.asarray(encode_long(params, cfg, windows))
    assert out.shape == (3000, 36)
    np.testing.assert_allclose(out[:1500], singles[0], atol=1e-5)
    np.testing.assert_allclose(out[1500:], singles[1], atol=1e-5)
    batched = jax.eval_shape(
        lambda w: encode_long(params, cfg, w), jax.ShapeDtypeStruct((3, 2, 80, 3000), jnp.float32)
    )
    assert batched.shape == (3, 3000, 36)


def test_encode_long_rejects_too_many_windows(converted):
    cfg, _, params = converted
    short = cfg.replace(max_audio_seconds=30.0)
    with pytest.raises(ValueError, match="2 windows.*maximum is 1"):
        encode_long(params, short, jnp.zeros((2, 80, 3000)))


def test_wrong_frame_count_is_rejected(converted):
    cfg, _, params = converted
    with pytest.raises(ValueError, match=r"\[batch, 80, 3000\].*\(1, 80, 2999\)"):
        WhisperEncoder(cfg).apply({"params": params}, jnp.zeros((1, 80, 2999)))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_whisper_tiny_param_count_matches_transformers():
    abstract = jax.eval_shape(
        WhisperEncoder(WHISPER_TINY).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 80, 3000), jnp.float32),
    )
    ours = _count(nn.unbox(abstract["params"]))
    with torch.device("meta"):
        hf = tf.WhisperModel(tf.WhisperConfig()).encoder  # WhisperConfig() is whisper-tiny
    expected = sum(p.numel() for p in hf.parameters())
    assert ours == expected == WHISPER_TINY.num_params == 8_208_384


def test_every_weight_has_logical_axes():
    cfg = AudioConfig(d_model=36, num_layers=1, num_heads=3, ffw_dim=23)
    abstract = jax.eval_shape(
        WhisperEncoder(cfg).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 80, 3000), jnp.float32),
    )
    leaves = jax.tree.leaves(abstract["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape)
        if leaf.value.ndim > 1:  # every matrix has at least one shardable axis
            assert any(n is not None for n in leaf.names), leaf.names
    specs = nn.get_partition_spec(abstract["params"])
    attn = specs["layers_0"]["self_attn"]
    assert tuple(attn["q_proj"]["kernel"]) == ("embed", "heads", "head_dim")
    assert tuple(attn["out_proj"]["kernel"]) == ("heads", "head_dim", "embed")
    assert tuple(specs["layers_0"]["fc1"]["kernel"]) == ("embed", "mlp")


def test_bf16_compute_is_close(converted, encoder_fn):
    cfg, _, params = converted
    x = np.random.default_rng(2).standard_normal((2, 80, 3000)).astype(np.float32)
    ref = np.asarray(encoder_fn({"params": params}, x))
    out = jax.jit(WhisperEncoder(cfg.replace(dtype="bfloat16")).apply)({"params": params}, x)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    assert np.abs(out - ref).mean() < 0.05


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "bert"}, r"whisper/config\.json: unsupported model_type 'bert'"),
        ({"activation_function": "relu"}, r"field `activation_function`: only 'gelu'"),
        ({"encoder_attention_heads": 5}, r"field `encoder_attention_heads`: d_model \(36\)"),
        ({"encoder_layers": 0}, r"field `encoder_layers`: must be a positive integer"),
        ({"num_mel_bins": "80"}, r"field `num_mel_bins`: expected an integer"),
    ],
)
def test_config_errors_name_source_and_field(hf_whisper, change, message):
    _, _, config_json = hf_whisper
    with pytest.raises(ConfigError, match=message):
        audio_config_from_hf({**config_json, **change}, source="whisper/config.json")


def test_config_missing_field():
    with pytest.raises(ConfigError, match="missing required field `encoder_ffn_dim`"):
        audio_config_from_hf(
            {
                "model_type": "whisper",
                "d_model": 8,
                "encoder_layers": 1,
                "encoder_attention_heads": 2,
            }
        )


def test_config_dict_round_trip():
    from autoglm_jax.config._common import from_dict, to_dict

    cfg = WHISPER_TINY.replace(max_audio_seconds=70.0, dtype="bfloat16")
    assert from_dict(AudioConfig, to_dict(cfg)) == cfg
    assert cfg.max_windows == 3
