"""The glm4v model (GLM-4.1V, the real AutoGLM-Phone-9B architecture) against a tiny random
transformers Glm4vForConditionalGeneration saved with save_pretrained: logits for prompts built
with our processing path (chat template -> process_images -> expand_image_placeholders), two
images of different sizes, batch 2 with left padding; HF export and native round trips."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import autoglm_jax as ag
from autoglm_jax.config import ConfigError
from autoglm_jax.families.glm4v import glm4v_config_to_hf
from autoglm_jax.nn.vision import grid_tuple
from autoglm_jax.processing.image import ImageProcessorConfig, process_images
from autoglm_jax.processing.prompt import (
    expand_image_placeholders,
    get_rope_index,
    make_mm_token_type_ids,
)
from autoglm_jax.processing.tokenizer import Tokenizer

TOKENIZER_DIR = Path(ag.__file__).parent / "assets" / "tiny_tokenizer"
IMAGE, BEGIN, END, VIDEO_BEGIN, VIDEO_END, VIDEO, PAD = 505, 501, 502, 503, 504, 506, 491
# Small images: sides become multiples of 28 with at most 12 merged tokens per image.
PROCESSOR = ImageProcessorConfig(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 2 * 12)


def hf_glm4v(seed: int = 0, text: dict | None = None, vision: dict | None = None, **top):
    """A tiny random Glm4vForConditionalGeneration with O(1) weights (norms around 1, biases
    non-zero) so a 1e-4 tolerance means something. Special ids are the tiny tokenizer's;
    `text`, `vision` and `top` override config fields."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Glm4vConfig(
        text_config={
            **dict(
                vocab_size=530,
                hidden_size=48,
                intermediate_size=40,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                pad_token_id=PAD,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,
                    "mrope_section": [1, 1, 1],
                },
            ),
            **(text or {}),
        },
        vision_config={
            **dict(
                depth=2,
                hidden_size=24,
                num_heads=2,
                out_hidden_size=48,
                intermediate_size=20,
                image_size=56,
                attention_bias=True,
            ),
            **(vision or {}),
        },
        image_token_id=IMAGE,
        image_start_token_id=BEGIN,
        image_end_token_id=END,
        video_start_token_id=VIDEO_BEGIN,
        video_end_token_id=VIDEO_END,
        video_token_id=VIDEO,
        **top,
    )
    model = Glm4vForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.ndim >= 2 else 4.0
            p.copy_(torch.randn_like(p) / fan_in**0.5)
            if p.ndim == 1 and "norm" in name and not name.endswith("bias"):
                p.add_(1.0)
    return model


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, shape, dtype=np.uint8)
        for shape in ((60, 90, 3), (100, 50, 3), (70, 45, 3))
    ]


def prompt_ids(tok: Tokenizer, parts: list, grid: np.ndarray, merge_size: int = 2) -> np.ndarray:
    """Chat template -> token ids -> one `<|image|>` per vision token."""
    content = [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]
    ids = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=True)
    return expand_image_placeholders(
        ids, grid, IMAGE, merge_size, image_start_token_id=BEGIN, image_end_token_id=END
    )


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = hf_glm4v()
    directory = tmp_path_factory.mktemp("glm4v")
    model.save_pretrained(directory)
    tok = Tokenizer.from_dir(TOKENIZER_DIR)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((TOKENIZER_DIR / name).read_bytes())
    return model, directory, tok


def hf_logits(model, ids, pixels, grid, mask=None) -> np.ndarray:
    kwargs = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            pixel_values=torch.from_numpy(pixels),
            image_grid_thw=torch.from_numpy(grid.astype(np.int64)),
            mm_token_type_ids=torch.from_numpy(
                make_mm_token_type_ids(ids, IMAGE, VIDEO_BEGIN, VIDEO_END)
            ),
            **kwargs,
        )
    return out.logits.numpy()


def test_config_reads_glm4v(case):
    _, directory, _ = case
    cfg = ag.load_config(directory)
    assert cfg.model_type == "glm4v" and cfg.hf_architecture == "Glm4vForConditionalGeneration"
    assert (cfg.image_token_id, cfg.image_start_token_id, cfg.image_end_token_id) == (
        IMAGE,
        BEGIN,
        END,
    )
    assert cfg.text.mrope_section == (1, 1, 1) and cfg.text.sandwich_norm
    assert cfg.vision.out_hidden_size == cfg.text.d_model == 48


def test_two_images_of_different_sizes_match_transformers(case):
    model, directory, tok = case
    m = ag.load(directory)
    assert m.tokenizer is not None
    proc = process_images(images()[:2], PROCESSOR)
    grid = proc.image_grid_thw
    assert grid[0].tolist() != grid[1].tolist()
    ids = prompt_ids(tok, [None, "what is on the screen?", None, "and here"], grid)[None]
    assert (ids == IMAGE).sum() == proc.num_image_tokens()[0] + proc.num_image_tokens()[1]
    ref = hf_logits(model, ids, proc.pixel_values, grid)
    # The documented call: transformers' processed inputs, positions computed inside.
    out = np.asarray(
        m.module.apply(
            {"params": m.params}, ids, pixel_values=proc.pixel_values, image_grid_thw=grid
        )
    )
    assert out.shape == ref.shape and np.abs(ref).max() > 0.5
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    # The images matter: without them (image tokens keep their own embedding) logits change.
    plain = np.asarray(m.module.apply({"params": m.params}, ids))
    assert np.abs(plain - ref).max() > 1e-2


def test_every_field_the_modeling_code_reads(tmp_path):
    """Non-default values of the fields transformers' glm4v code reads, including one it
    overrides: Glm4vTextAttention derives head size hidden_size // heads (12 here) and ignores
    config.json's head_dim, which only the rotary embedding reads (8 * 0.75 = 6 rotated)."""
    model = hf_glm4v(
        seed=1,
        text=dict(
            head_dim=8,
            rms_norm_eps=1e-3,
            num_key_value_heads=1,
            num_hidden_layers=3,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 500.0,
                "partial_rotary_factor": 0.75,
                "mrope_section": [1, 1, 1],
            },
        ),
        vision=dict(
            depth=3, rms_norm_eps=1e-2, attention_bias=False, num_heads=3, intermediate_size=28
        ),
        tie_word_embeddings=False,
    )
    model.save_pretrained(tmp_path)
    cfg = ag.load_config(tmp_path)
    assert (cfg.text.head_dim, cfg.text.rotary_dim, cfg.text.num_layers) == (12, 6, 3)
    assert (cfg.text.rms_norm_eps, cfg.vision.rms_norm_eps) == (1e-3, 1e-2)
    m = ag.load(tmp_path)
    tok = Tokenizer.from_dir(TOKENIZER_DIR)
    proc = process_images(images(3)[:1], PROCESSOR)
    ids = prompt_ids(tok, [None, "tap the button"], proc.image_grid_thw)[None]
    ref = hf_logits(model, ids, proc.pixel_values, proc.image_grid_thw)
    out = np.asarray(
        m.module.apply(
            {"params": m.params},
            ids,
            pixel_values=proc.pixel_values,
            image_grid_thw=proc.image_grid_thw,
        )
    )
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_every_vision_size_field(tmp_path):
    """The vision tower's size fields at non-default values: 7-pixel patches, 3 frames per
    temporal patch, 3x3 merging, a 42-pixel position table (6x6, interpolated to each image's
    grid), a tower width unlike the decoder's. Our processor follows the same sizes."""
    model = hf_glm4v(
        seed=2,
        vision=dict(
            patch_size=7,
            temporal_patch_size=3,
            spatial_merge_size=3,
            image_size=42,
            hidden_size=36,
            num_heads=3,
        ),
    )
    model.save_pretrained(tmp_path)
    cfg = ag.load_config(tmp_path).vision
    assert (cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size) == (7, 3, 3)
    assert (cfg.image_size, cfg.d_model) == (42, 36)
    m = ag.load(tmp_path)
    unit = 21 * 21 * 3  # one merged token: (7 * 3)^2 pixels, times 3 frames
    proc = process_images(
        images(4)[:2],
        ImageProcessorConfig(
            min_pixels=unit * 2,
            max_pixels=unit * 12,
            patch_size=7,
            temporal_patch_size=3,
            merge_size=3,
        ),
    )
    assert proc.pixel_values.shape[1] == 3 * 3 * 7 * 7
    tok = Tokenizer.from_dir(TOKENIZER_DIR)
    ids = prompt_ids(tok, [None, "and", None], proc.image_grid_thw, merge_size=3)[None]
    ref = hf_logits(model, ids, proc.pixel_values, proc.image_grid_thw)
    out = np.asarray(
        m.module.apply(
            {"params": m.params},
            ids,
            pixel_values=proc.pixel_values,
            image_grid_thw=proc.image_grid_thw,
        )
    )
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_left_padded_batch_matches_transformers_under_jit(case):
    model, directory, tok = case
    m = ag.load(directory)
    imgs = images()
    long_proc = process_images(imgs[:2], PROCESSOR)
    short_proc = process_images(imgs[2:], PROCESSOR)
    a = prompt_ids(tok, [None, "tap the blue button", None, "then wait"], long_proc.image_grid_thw)
    b = prompt_ids(tok, ["hi", None, "ok"], short_proc.image_grid_thw)
    length = max(len(a), len(b))
    ids = np.full((2, length), PAD, np.int32)
    mask = np.zeros((2, length), np.int32)
    for row, seq in enumerate((a, b)):
        ids[row, length - len(seq) :] = seq
        mask[row, length - len(seq) :] = 1
    assert mask.sum(1).min() < length  # row 1 is padded
    pixels = np.concatenate([long_proc.pixel_values, short_proc.pixel_values])
    grid = np.concatenate([long_proc.image_grid_thw, short_proc.image_grid_thw])
    ref = hf_logits(model, ids, pixels, grid, mask)

    positions, _ = get_rope_index(
        ids,
        grid,
        mask,
        image_token_id=IMAGE,
        video_start_token_id=VIDEO_BEGIN,
        video_end_token_id=VIDEO_END,
    )
    fwd = jax.jit(
        lambda p, ids, pos, pv, mask: m.module.apply(
            {"params": p}, ids, pos, pv, grid_tuple(grid), attention_mask=mask
        )
    )
    out = np.asarray(fwd(m.params, ids, positions, pixels, mask))
    keep = mask.astype(bool)
    np.testing.assert_allclose(out[keep], ref[keep], atol=1e-4, rtol=0)
    # Under jit the positions cannot come from traced ids: a clear error says what to pass.
    with pytest.raises(TypeError, match="positions="):
        jax.jit(lambda p, ids: m.module.apply({"params": p}, ids, None, pixels, grid_tuple(grid)))(
            m.params, ids
        )


def test_image_token_count_mismatch_is_an_error(case):
    _, directory, _ = case
    m = ag.load(directory)
    proc = process_images(images()[:1], PROCESSOR)
    ids = np.asarray([[BEGIN, IMAGE, END, 7]], np.int32)  # placeholder not expanded
    with pytest.raises(ValueError, match="image tokens"):
        m.module.apply(
            {"params": m.params},
            ids,
            pixel_values=proc.pixel_values,
            image_grid_thw=proc.image_grid_thw,
        )


def test_export_hf_loads_in_transformers(case, tmp_path):
    from transformers import Glm4vForConditionalGeneration

    model, directory, _ = case
    m = ag.load(directory)
    ag.export_hf(m, tmp_path / "out")
    back = Glm4vForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    want = model.state_dict()
    got = back.state_dict()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert ag.load_config(tmp_path / "out") == ag.load_config(directory)
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_native_save_load_round_trip_is_exact(case, tmp_path):
    _, directory, _ = case
    m = ag.load(directory)
    ag.save(m, tmp_path / "native")
    back = ag.load(tmp_path / "native")
    assert back.config == m.config
    assert jax.tree.structure(back.params) == jax.tree.structure(m.params)
    for x, y in zip(jax.tree.leaves(m.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bf16_load_casts_every_stack(case):
    _, directory, _ = case
    m = ag.load(directory, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(m.params)} == {jnp.dtype(jnp.bfloat16)}
    assert m.config.vision.dtype == m.config.text.dtype == "bfloat16"


def test_export_rejects_head_dim_transformers_cannot_express(case):
    _, directory, _ = case
    cfg = ag.load_config(directory)
    bad = cfg.replace(text=cfg.text.replace(num_heads=2))  # 2 heads of 12 != 48
    with pytest.raises(ConfigError, match="head_dim"):
        glm4v_config_to_hf(bad)


def test_export_rejects_quantized_and_pruned_decoders(case):
    from autoglm_jax.config.quant import QuantConfig

    _, directory, _ = case
    cfg = ag.load_config(directory)
    quantized = cfg.replace(text=cfg.text.replace(quant=QuantConfig()))
    with pytest.raises(ConfigError, match="quantized weights have no Hugging Face layout"):
        glm4v_config_to_hf(quantized)
    widths = (cfg.text.ffw_dim,) * (cfg.text.num_layers - 1) + (cfg.text.ffw_dim - 1,)
    pruned = cfg.replace(text=cfg.text.replace(layer_ffw_dims=widths))
    with pytest.raises(ConfigError, match="per-layer widths"):
        glm4v_config_to_hf(pruned)
