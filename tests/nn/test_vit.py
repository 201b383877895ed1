"""The ViT encoder against transformers' ViTModel, its tensor maps, and its config."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoglm_jax.config import ConfigError
from autoglm_jax.config.vit import VIT_B16, ViTConfig
from autoglm_jax.families import vit_keys
from autoglm_jax.families.keymap import params_from_state_dict, state_dict_from_params
from autoglm_jax.families.vit import vit_config_from_hf
from autoglm_jax.nn.vit import ViTEncoder, patchify

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

# (name, image_size, patch_size, add_pooling_layer): the second case is non-square, has
# non-square patches, and 30 rows that are not a multiple of the patch height (HF drops them).
CASES = [("square-pooler", 32, 8, True), ("nonsquare-cropped-nopool", (30, 24), (8, 4), False)]


def _hf_config(image_size, patch_size):
    return tf.ViTConfig(
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=23,
        image_size=image_size,
        patch_size=patch_size,
    )


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def hf_vit(request, tmp_path_factory):
    """A tiny random ViTModel saved with save_pretrained (which writes the hub key names)."""
    name, image_size, patch_size, pool = request.param
    torch.manual_seed(0)
    model = tf.ViTModel(_hf_config(image_size, patch_size), add_pooling_layer=pool).eval()
    # Norms at 1, biases at 0 and std 0.02 weights would hide a swapped norm, a dropped bias or
    # an approximate GELU: perturb them and give matrices unit-gain (1/sqrt(fan_in)) weights.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.ndim >= 2 and "embeddings." not in pname.replace("patch_embeddings", ""):
                p.normal_(0.0, p[0].numel() ** -0.5)
    directory = tmp_path_factory.mktemp(name)
    model.save_pretrained(directory)
    from safetensors.numpy import load_file

    state = load_file(str(directory / "model.safetensors"))
    config_json = json.loads((directory / "config.json").read_text())
    cfg = vit_config_from_hf(config_json, add_pooling_layer=pool)
    return model, state, cfg


def test_hidden_state_and_pooler_match_transformers(hf_vit):
    model, state, cfg = hf_vit
    params = params_from_state_dict(vit_keys.hf_tensor_maps(cfg), state)
    x = np.random.default_rng(0).standard_normal((2, 3, *cfg.image_size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    hidden, pooled = jax.jit(ViTEncoder(cfg).apply)({"params": params}, x)
    assert hidden.shape == (2, cfg.seq_len, 36)
    err = float(np.abs(np.asarray(hidden) - ref.last_hidden_state.numpy()).max())
    assert err < 1e-4, err
    if cfg.add_pooling_layer:
        err = float(np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max())
        assert err < 1e-4, err
    else:
        assert pooled is None and ref.pooler_output is None


def test_every_field_the_modeling_code_reads(tmp_path):
    """Non-default values of every field ViTModel reads: one channel, no q/k/v bias, LayerNorm
    eps 1e-3 (visible at these activations), a pooler narrower than the model."""
    torch.manual_seed(4)
    config = tf.ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=19,
        image_size=(20, 16),
        patch_size=(5, 4),
        num_channels=1,
        qkv_bias=False,
        layer_norm_eps=1e-3,
        pooler_output_size=12,
        hidden_act="gelu",
        pooler_act="tanh",
    )
    model = tf.ViTModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
    model.save_pretrained(tmp_path)
    cfg = vit_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert (cfg.num_channels, cfg.qkv_bias, cfg.layer_norm_eps) == (1, False, 1e-3)
    assert (cfg.image_size, cfg.patch_size, cfg.pooler_width) == ((20, 16), (5, 4), 12)
    from safetensors.numpy import load_file

    params = params_from_state_dict(
        vit_keys.hf_tensor_maps(cfg), load_file(str(tmp_path / "model.safetensors"))
    )
    x = np.random.default_rng(2).standard_normal((2, 1, 20, 16)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    hidden, pooled = ViTEncoder(cfg).apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(hidden), ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_tensor_maps_cover_checkpoint_and_round_trip(hf_vit):
    _, state, cfg = hf_vit
    maps = vit_keys.hf_tensor_maps(cfg)
    assert sorted(m.hf_key for m in maps) == sorted(state)
    params = params_from_state_dict(maps, state)
    back = state_dict_from_params(maps, params)
    for key, value in state.items():
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    abstract = jax.eval_shape(
        ViTEncoder(cfg).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 3, *cfg.image_size), jnp.float32),
    )
    assert jax.tree.map(np.shape, params) == jax.tree.map(
        lambda s: s.shape, nn.unbox(abstract["params"])
    )


def test_transformers_module_layout_matches_state_dict(hf_vit):
    # transformers >= 5 names the modules differently in memory than on disk.
    model, state, cfg = hf_vit
    live = {k: v.numpy() for k, v in model.state_dict().items()}
    maps = vit_keys.hf_tensor_maps(cfg, layout="transformers")
    assert sorted(m.hf_key for m in maps) == sorted(live)
    a = params_from_state_dict(maps, live)
    b = params_from_state_dict(vit_keys.hf_tensor_maps(cfg), state)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_classification_checkpoint_prefix():
    torch.manual_seed(0)
    hf_cfg = _hf_config(32, 8)
    hf_cfg.architectures = ["ViTForImageClassification"]
    model = tf.ViTForImageClassification(hf_cfg)
    cfg = vit_config_from_hf(hf_cfg.to_dict())
    assert not cfg.add_pooling_layer  # inferred from `architectures`
    # The in-memory names of transformers 5; on disk the same keys carry the hub spelling.
    live = {k: v.numpy() for k, v in model.state_dict().items()}
    maps = vit_keys.hf_tensor_maps(cfg, prefix="vit.", layout="transformers")
    ignored = {k for k in live if vit_keys.is_ignored(k)}
    assert ignored == {"classifier.weight", "classifier.bias"}
    assert {m.hf_key for m in maps} == set(live) - ignored


def test_patchify_matches_conv_order():
    x = np.arange(2 * 3 * 6 * 4, dtype=np.float32).reshape(2, 3, 6, 4)
    p = np.asarray(patchify(jnp.asarray(x), (2, 2)))
    assert p.shape == (2, 6, 3, 2, 2)
    np.testing.assert_array_equal(p[1, 3], x[1, :, 2:4, 2:4])  # patch row 1, column 1


def test_wrong_image_size_is_rejected():
    cfg = ViTConfig(d_model=12, num_layers=1, num_heads=3, ffw_dim=7, image_size=16, patch_size=8)
    with pytest.raises(ValueError, match=r"\[batch, 3, 16, 16\], got \(1, 3, 16, 24\)"):
        jax.eval_shape(
            ViTEncoder(cfg).init,
            jax.random.key(0),
            jax.ShapeDtypeStruct((1, 3, 16, 24), jnp.float32),
        )


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("pool", [True, False])
def test_vit_b16_param_count(pool):
    cfg = VIT_B16.replace(add_pooling_layer=pool)
    abstract = jax.eval_shape(
        ViTEncoder(cfg).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 224, 224), jnp.float32)
    )
    ours = _count(nn.unbox(abstract["params"]))
    with torch.device("meta"):
        hf = tf.ViTModel(tf.ViTConfig(), add_pooling_layer=pool)
    expected = sum(p.numel() for p in hf.parameters())
    assert ours == expected == cfg.num_params
    assert ours == (86_389_248 if pool else 86_389_248 - 768 * 768 - 768)


def test_every_weight_has_logical_axes():
    cfg = ViTConfig(d_model=12, num_layers=1, num_heads=3, ffw_dim=7, image_size=16, patch_size=8)
    abstract = jax.eval_shape(
        ViTEncoder(cfg).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 16, 16), jnp.float32)
    )
    leaves = jax.tree.leaves(abstract["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape)
        if leaf.value.ndim > 1:  # every matrix has at least one shardable axis
            assert any(n is not None for n in leaf.names), leaf.names
    specs = nn.get_partition_spec(abstract["params"])
    assert tuple(specs["layers_0"]["attention"]["k_proj"]["kernel"]) == (
        "embed",
        "heads",
        "head_dim",
    )
    assert tuple(specs["layers_0"]["fc2"]["kernel"]) == ("mlp", "embed")


def test_config_from_hf_fields():
    cfg = vit_config_from_hf({**tf.ViTConfig().to_dict(), "architectures": ["ViTModel"]})
    assert cfg == VIT_B16
    assert cfg.grid == (14, 14) and cfg.seq_len == 197 and cfg.layer_norm_eps == 1e-12
    odd = vit_config_from_hf(_hf_config([30, 24], [8, 4]).to_dict())
    assert odd.image_size == (30, 24) and odd.patch_size == (8, 4) and odd.grid == (3, 6)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "deit"}, r"vit/config\.json: unsupported model_type 'deit'"),
        ({"hidden_act": "gelu_new"}, r"field `hidden_act`: only 'gelu'"),
        ({"pooler_act": "relu"}, r"field `pooler_act`: only 'tanh'"),
        ({"num_attention_heads": 5}, r"field `num_attention_heads`: d_model \(36\)"),
        ({"patch_size": 64}, r"field `patch_size`: \[64, 64\] is larger than image_size"),
        ({"image_size": [32, 32, 3]}, r"field `image_size`: must be a positive int or two"),
        ({"qkv_bias": "yes"}, r"field `qkv_bias`: expected a boolean"),
    ],
)
def test_config_errors_name_source_and_field(change, message):
    base = _hf_config(32, 8).to_dict()
    with pytest.raises(ConfigError, match=message):
        vit_config_from_hf({**base, **change}, source="vit/config.json")


def test_config_dict_round_trip():
    from autoglm_jax.config._common import from_dict, to_dict

    cfg = ViTConfig(
        d_model=12,
        num_layers=1,
        num_heads=3,
        ffw_dim=7,
        image_size=(30, 24),
        patch_size=(8, 4),
        add_pooling_layer=False,
        pooler_dim=5,
    )
    data = to_dict(cfg)
    assert data["image_size"] == [30, 24]
    assert from_dict(ViTConfig, data) == cfg
