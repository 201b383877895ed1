"""The GLM-4.1V vision tower against transformers' Glm4vVisionModel (model.visual of a tiny
random Glm4vForConditionalGeneration), its key map, config reader and parameter count."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from autoglm_jax.config import ConfigError
from autoglm_jax.config.vision import VisionConfig
from autoglm_jax.families.glm4v import vision_config_from_hf, vision_config_to_hf
from autoglm_jax.families.keymap import params_from_state_dict, state_dict_from_params
from autoglm_jax.families.vision_keys import hf_tensor_maps
from autoglm_jax.nn.vision import (
    Glm4vVisionTower,
    bicubic_resample_matrix,
    count_params,
    grid_tuple,
    masked_attention,
    per_image_attention,
)

# Odd head count, position table 5x5 (image_size 70 / patch 14); qkv bias on so its map is used.
TINY = VisionConfig(
    depth=2,
    d_model=36,
    num_heads=3,
    ffw_dim=20,
    out_hidden_size=20,
    merger_ffw_dim=28,
    image_size=70,
    attention_bias=True,
)
# Three images of different sizes: a grid wider than the table (10 > 5), one shorter (2 < 5).
GRID = np.array([[1, 6, 8], [1, 4, 10], [1, 2, 2]])


def _hf_config_dict(vc: VisionConfig) -> dict:
    return {
        "model_type": "glm4v",
        "vision_config": vision_config_to_hf(vc),
        "text_config": {
            "model_type": "glm4v_text",
            "vocab_size": 64,
            "hidden_size": vc.out_hidden_size,
            "intermediate_size": 24,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [1, 2, 2],
            },
        },
    }


@pytest.fixture(scope="module")
def hf_visual():
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    torch.manual_seed(0)
    cfg = {k: v for k, v in _hf_config_dict(TINY).items() if k != "model_type"}
    model = Glm4vForConditionalGeneration(Glm4vConfig(**cfg)).eval()
    # Default init leaves outputs ~1e-4 and norms at 1; scale every tensor to O(1) outputs so
    # the 1e-4 tolerance is meaningful and a swapped norm or dropped bias shows.
    with torch.no_grad():
        for name, p in model.model.visual.named_parameters():
            fan_in = p[0].numel() if p.ndim >= 2 else 4.0
            p.copy_(torch.randn_like(p) / fan_in**0.5)
            if (
                name.endswith("norm1.weight")
                or "layernorm" in name
                or name.endswith("norm2.weight")
                or name.endswith("post_projection_norm.weight")
            ):
                p.add_(1.0)
    state = {k: v.numpy() for k, v in model.state_dict().items() if k.startswith("model.visual.")}
    return model, state


def _pixels(grid, seed=0):
    n = int(np.prod(grid, axis=1).sum())
    return np.random.default_rng(seed).standard_normal((n, TINY.patch_dim)).astype(np.float32)


def _hf_forward(model, pixels, grid):
    with torch.no_grad():
        out = model.model.visual(torch.from_numpy(pixels), grid_thw=torch.from_numpy(grid))
    return out.pooler_output.numpy()


def _jit_apply(tower, params, pixels, grid):
    return np.asarray(
        jax.jit(tower.apply, static_argnums=2)(
            {"params": params}, jnp.asarray(pixels), grid_tuple(grid)
        )
    )


def test_key_map_covers_checkpoint_and_round_trips(hf_visual):
    _, state = hf_visual
    maps = hf_tensor_maps(TINY)
    assert sorted(m.hf_key for m in maps) == sorted(state)
    params = params_from_state_dict(maps, state)
    # The converted tree has exactly the module's structure and shapes.
    init = jax.eval_shape(
        lambda: Glm4vVisionTower(TINY).init(jax.random.PRNGKey(0), jnp.asarray(_pixels(GRID)), GRID)
    )
    want = jax.tree.map(lambda x: x.shape, nn.meta.unbox(init["params"]))
    assert jax.tree.map(lambda x: x.shape, params) == want
    back = state_dict_from_params(maps, params)
    assert sorted(back) == sorted(state)
    for k, v in state.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_tower_matches_transformers_packed_images(hf_visual):
    model, state = hf_visual
    params = params_from_state_dict(hf_tensor_maps(TINY), state)
    pixels = _pixels(GRID)
    ref = _hf_forward(model, pixels, GRID)
    out = np.asarray(Glm4vVisionTower(TINY).apply({"params": params}, jnp.asarray(pixels), GRID))
    assert out.shape == (int(np.prod(GRID, axis=1).sum()) // 4, TINY.out_hidden_size)
    assert np.abs(ref).max() > 0.1  # outputs are O(1), so the tolerance below means something
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_attention_stays_within_each_image(hf_visual):
    # transformers attends within each image (cu_seqlens); letting patches see the other images
    # must break parity, so the parity test above does check the block-diagonal mask.
    model, state = hf_visual
    params = params_from_state_dict(hf_tensor_maps(TINY), state)
    pixels = _pixels(GRID)

    ref = _hf_forward(model, pixels, GRID)
    # The one-matrix masked reference (what a segment-id kernel computes) agrees too.
    masked = _jit_apply(Glm4vVisionTower(TINY, attention_fn=masked_attention), params, pixels, GRID)
    np.testing.assert_allclose(masked, ref, atol=1e-4, rtol=0)

    def unmasked(q, k, v, layout, scale):  # every patch sees every image
        one = dataclasses.replace(layout, segments=((0, layout.num_patches),))
        return per_image_attention(q, k, v, one, scale)

    leaky = _jit_apply(Glm4vVisionTower(TINY, attention_fn=unmasked), params, pixels, GRID)
    assert np.abs(leaky - ref).max() > 1e-2


def test_jit_with_static_grid_and_traced_grid_error(hf_visual):
    _, state = hf_visual
    params = params_from_state_dict(hf_tensor_maps(TINY), state)
    pixels = jnp.asarray(_pixels(GRID))
    tower = Glm4vVisionTower(TINY)
    eager = tower.apply({"params": params}, pixels, GRID)
    jitted = jax.jit(tower.apply, static_argnums=2)({"params": params}, pixels, grid_tuple(GRID))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="image_grid_thw must be concrete"):
        jax.jit(tower.apply)({"params": params}, pixels, jnp.asarray(GRID))


def test_bf16_runs_close_to_fp32(hf_visual):
    model, state = hf_visual
    cfg = TINY.replace(param_dtype="bfloat16", dtype="bfloat16")
    params = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.bfloat16), params_from_state_dict(hf_tensor_maps(cfg), state)
    )
    pixels = _pixels(GRID)
    out = _jit_apply(Glm4vVisionTower(cfg), params, pixels, GRID).astype(np.float32)
    ref = _hf_forward(model, pixels, GRID)
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.02


@pytest.mark.parametrize("out_size", [1, 2, 5, 8, 13, 40])
def test_bicubic_matrix_equals_grid_sample(out_size):
    import torch.nn.functional as F

    g = 5
    table = np.random.default_rng(out_size).standard_normal((g, g, 3)).astype(np.float32)
    rows, cols = bicubic_resample_matrix(out_size, g), bicubic_resample_matrix(7, g)
    ours = np.einsum("yi,ijd,xj->yxd", rows, table, cols)
    ys, xs = np.meshgrid(np.arange(out_size), np.arange(7), indexing="ij")
    norm = np.stack([((xs + 0.5) / 7) * 2 - 1, ((ys + 0.5) / out_size) * 2 - 1], axis=-1)
    ref = (
        F.grid_sample(
            torch.from_numpy(table).permute(2, 0, 1)[None],
            torch.from_numpy(norm.astype(np.float32))[None],
            mode="bicubic",
            align_corners=False,
            padding_mode="border",
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_bad_inputs_are_named():
    tower = Glm4vVisionTower(TINY)
    with pytest.raises(ValueError, match="describes 48"):
        tower.init(jax.random.PRNGKey(0), jnp.zeros((40, TINY.patch_dim)), [[1, 6, 8]])
    with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
        tower.init(jax.random.PRNGKey(0), jnp.zeros((15, TINY.patch_dim)), [[1, 3, 5]])
    with pytest.raises(ValueError, match=r"\[num_patches, 1176\]"):
        tower.init(jax.random.PRNGKey(0), jnp.zeros((48, 100)), [[1, 6, 8]])


def test_every_weight_has_logical_axes():
    boxed = jax.eval_shape(
        lambda: Glm4vVisionTower(TINY).init(
            jax.random.PRNGKey(0), jnp.zeros((4, TINY.patch_dim)), [[1, 2, 2]]
        )
    )["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    assert all(len(x.names) == len(x.value.shape) for x in leaves)


def test_real_config_parameter_count_matches_transformers():
    from transformers import Glm4vVisionConfig, Glm4vVisionModel

    cfg = VisionConfig()  # GLM-4.1V-9B / AutoGLM-Phone-9B
    shapes = jax.eval_shape(
        lambda: Glm4vVisionTower(cfg).init(
            jax.random.PRNGKey(0), jnp.zeros((4, cfg.patch_dim)), [[1, 2, 2]]
        )
    )["params"]
    with torch.device("meta"):
        hf = Glm4vVisionModel(Glm4vVisionConfig())
    hf_count = sum(p.numel() for p in hf.parameters())
    assert count_params(shapes) == cfg.num_params == hf_count == 892_498_432
    assert len(hf_tensor_maps(cfg)) == len(hf.state_dict())


def test_vision_config_from_hub_style_glm4v_config():
    hub = {
        "model_type": "glm4v",
        "text_config": {"hidden_size": 4096},
        "vision_config": {
            "hidden_size": 1536,
            "depth": 24,
            "num_heads": 12,
            "attention_bias": False,
            "intermediate_size": 13696,
            "hidden_act": "silu",
            "hidden_dropout_prob": 0.0,
            "initializer_range": 0.02,
            "image_size": 336,
            "patch_size": 14,
            "out_hidden_size": 4096,
            "rms_norm_eps": 1e-05,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }
    assert vision_config_from_hf(hub) == VisionConfig()
    assert vision_config_from_hf({"model_type": "glm4v"}) == VisionConfig()
    assert vision_config_from_hf(vision_config_to_hf(TINY)) == TINY
    with pytest.raises(ConfigError, match="vision_config: field `hidden_act`"):
        vision_config_from_hf({"model_type": "glm4v", "vision_config": {"hidden_act": "gelu"}})
    with pytest.raises(ConfigError, match="field `image_size`: only square"):
        vision_config_from_hf({"model_type": "glm4v", "vision_config": {"image_size": [336, 448]}})
    with pytest.raises(ConfigError, match="field `num_heads`"):
        vision_config_from_hf({"model_type": "glm4v", "vision_config": {"num_heads": 7}})
