"""The AutoGLM composite: per-stack parameter counts of the full-size presets (eval_shape),
`ag.load` of Whisper and ViT checkpoints, `ag.load(glm4v_dir, audio_encoder=..., vit_encoder=...)`
with fresh CGA weights that leave the base model's logits exactly unchanged, and the native
save/load round trip."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import autoglm_jax as ag
from autoglm_jax.config import ConfigError
from autoglm_jax.config.audio import WHISPER_TINY
from autoglm_jax.families import build_module, count_params_by_stack, example_inputs
from autoglm_jax.nn.vision import grid_tuple
from autoglm_jax.processing.image import ImageProcessorConfig, process_images
from autoglm_jax.processing.prompt import expand_image_placeholders, get_rope_index
from autoglm_jax.processing.tokenizer import Tokenizer

TOKENIZER_DIR = Path(ag.__file__).parent / "assets" / "tiny_tokenizer"
B = 10**9


def test_autoglm_phone_9b_parameters_per_stack():
    cfg = ag.load_config("autoglm-phone-9b")
    counts = count_params_by_stack(cfg)
    assert list(counts) == ["text", "vision", "audio", "projectors", "cga", "total"]
    assert counts["text"] == cfg.text.num_params == 9_400_279_040
    assert counts["vision"] == cfg.vision.num_params == 892_498_432
    assert round(counts["text"] / B, 2) == 9.40 and round(counts["vision"] / B, 2) == 0.89
    assert counts["audio"] == WHISPER_TINY.num_params == 8_208_384
    f, d = cfg.fusion, cfg.text.d_model
    assert f.num_blocks(cfg.text.num_layers) == 10
    assert counts["cga"] == 10 * f.block_params(d, 1)
    assert counts["projectors"] == f.projector_params(f.audio_stack * cfg.audio.d_model, d)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    # The base checkpoint (glm-4.1v-9b preset, the same text and vision) is about 10.3B.
    base = ag.load_config("glm-4.1v-9b")
    assert (base.text, base.vision) == (cfg.text, cfg.vision)
    assert round((counts["text"] + counts["vision"]) / B, 1) == 10.3


def test_mini_mm_parameter_shares_track_autoglm_phone_9b():
    """The compression report's preset: byte ratios mean what they would at 9B."""

    def shares(name):
        cfg = ag.load_config(name)
        c = count_params_by_stack(cfg)
        tables = 2 * cfg.text.vocab_size * cfg.text.d_model  # embeddings + untied lm_head
        return {
            "layers": (c["text"] - tables - cfg.text.d_model) / c["total"],
            "tables": tables / c["total"],
            "vision": c["vision"] / c["total"],
            "fusion": (c["cga"] + c["projectors"]) / c["total"],
        }

    mini, big = shares("mini-mm"), shares("autoglm-phone-9b")
    for key, tol in (("layers", 0.03), ("tables", 0.03), ("vision", 0.01), ("fusion", 0.01)):
        assert abs(mini[key] - big[key]) <= tol, (key, mini[key], big[key])


def test_tiny_mm_counts_match_the_config_formulas():
    cfg = ag.load_config("tiny-mm")
    counts = count_params_by_stack(cfg)
    f, d = cfg.fusion, cfg.text.d_model
    assert counts["text"] == cfg.text.num_params and counts["vision"] == cfg.vision.num_params
    assert counts["audio"] == cfg.audio.num_params and counts["vit"] == cfg.vit.num_params
    assert counts["cga"] == f.num_blocks(cfg.text.num_layers) * f.block_params(d, 2)
    assert counts["projectors"] == (
        f.projector_params(f.audio_stack * cfg.audio.d_model, d)
        + f.projector_params(cfg.vit.d_model, d)
    )


def test_presets_validate_their_stacks():
    cfg = ag.load_config("tiny-mm")
    assert cfg.modalities == ("audio", "vit") and cfg.audio_token_id == 509
    with pytest.raises(ConfigError, match="fusion"):
        cfg.replace(fusion=None)
    with pytest.raises(ConfigError, match="out_hidden_size"):
        cfg.replace(vision=cfg.vision.replace(out_hidden_size=36, ffw_dim=36))
    with pytest.raises(ConfigError, match="no audio stack"):
        ag.load_config("glm-4.1v-9b").replace(audio=WHISPER_TINY)
    bf16 = cfg.with_dtypes("bfloat16", "bfloat16")
    assert {getattr(bf16, s).param_dtype for s in ("text", "vision", "audio", "vit", "fusion")} == {
        "bfloat16"
    }


# --- Hugging Face parts ------------------------------------------------------------------


def _perturb(model):
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny WhisperForConditionalGeneration (24-frame windows) with its decoder."""
    import transformers as tf

    torch.manual_seed(0)
    model = _perturb(
        tf.WhisperForConditionalGeneration(
            tf.WhisperConfig(
                d_model=24,
                encoder_layers=1,
                encoder_attention_heads=3,
                encoder_ffn_dim=37,
                decoder_layers=1,
                decoder_attention_heads=3,
                decoder_ffn_dim=19,
                num_mel_bins=80,
                max_source_positions=12,
                max_target_positions=16,
                vocab_size=97,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=3,
            )
        )
    )
    directory = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    """A tiny ViTForImageClassification: keys under `vit.`, a classifier we ignore."""
    import transformers as tf

    torch.manual_seed(1)
    model = _perturb(
        tf.ViTForImageClassification(
            tf.ViTConfig(
                hidden_size=24,
                num_hidden_layers=1,
                num_attention_heads=3,
                intermediate_size=29,
                image_size=32,
                patch_size=8,
                num_labels=3,
            )
        )
    )
    directory = tmp_path_factory.mktemp("vit")
    model.save_pretrained(directory)
    return directory, model


def test_load_whisper_gives_the_encoder(whisper_dir):
    directory, model = whisper_dir
    m = ag.load(directory)
    assert m.config.model_type == "whisper" and m.config.audio.num_frames == 24
    feats = np.random.default_rng(0).standard_normal((2, 80, 24)).astype(np.float32)
    out = np.asarray(jax.jit(m.module.apply)({"params": m.params}, feats))
    with torch.no_grad():
        ref = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert out.shape == (2, 12, 24)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_load_vit_gives_the_last_hidden_state(vit_dir):
    directory, model = vit_dir
    m = ag.load(directory)
    assert m.config.model_type == "vit" and not m.config.vit.add_pooling_layer
    pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = np.asarray(jax.jit(m.module.apply)({"params": m.params}, pixels))
    with torch.no_grad():
        ref = model.vit(torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert out.shape == (2, 17, 24)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


# --- The composite -----------------------------------------------------------------------

_MM = ag.load_config("tiny-mm")
GLM4V = _MM.replace(
    model_type="glm4v",
    audio=None,
    vit=None,
    fusion=None,
    audio_token_id=None,
    text=_MM.text.replace(num_layers=2),
)


@pytest.fixture(scope="module")
def glm4v_dir(tmp_path_factory):
    """A random-weight tiny glm4v exported in the Hugging Face layout (with the tokenizer)."""
    module = build_module(GLM4V)
    args = example_inputs(GLM4V)
    shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(
            rng.standard_normal(s.shape).astype(np.float32) * (0.3 if len(s.shape) > 1 else 1.0)
        ),
        shapes,
    )
    m = ag.Model(GLM4V, params, module, Tokenizer.from_dir(TOKENIZER_DIR))
    directory = tmp_path_factory.mktemp("glm4v")
    ag.export_hf(m, directory)
    return directory


def _mm_inputs(cfg):
    rng = np.random.default_rng(2)
    proc = process_images(
        [
            rng.integers(0, 256, (60, 90, 3), dtype=np.uint8),
            rng.integers(0, 256, (40, 80, 3), dtype=np.uint8),
        ],
        ImageProcessorConfig(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 16),
    )
    raw = [493, 495, 498, 11, 501, 505, 502, 12, 501, 505, 502, 13, 499]
    ids = expand_image_placeholders(
        raw, proc.image_grid_thw, 505, image_start_token_id=501, image_end_token_id=502
    )[None]
    positions, _ = get_rope_index(
        ids,
        proc.image_grid_thw,
        image_token_id=505,
        video_start_token_id=503,
        video_end_token_id=504,
    )
    return ids, positions, proc


def test_composite_from_glm4v_whisper_and_vit(glm4v_dir, whisper_dir, vit_dir, tmp_path):
    base = ag.load(glm4v_dir)
    whisper = ag.load(whisper_dir[0])
    m = ag.load(glm4v_dir, audio_encoder=whisper_dir[0], vit_encoder=vit_dir[0], seed=3)
    cfg = m.config
    assert cfg.model_type == "autoglm" and cfg.modalities == ("audio", "vit")
    assert cfg.audio == whisper.config.audio and cfg.vision == base.config.vision
    assert cfg.audio_token_id == 509  # read from the tokenizer's `<|audio|>`
    assert m.tokenizer is not None
    for x, y in zip(jax.tree.leaves(whisper.params), jax.tree.leaves(m.params["audio_encoder"])):
        np.testing.assert_array_equal(x, y)
    blocks = [v for k, v in m.params["fusion"].items() if k.startswith("blocks_")]
    assert len(blocks) == cfg.fusion.num_blocks(cfg.text.num_layers) > 0
    assert all(np.all(np.asarray(b[a]) == 0) for b in blocks for a in ("attn_alpha", "mlp_alpha"))

    ids, positions, proc = _mm_inputs(cfg)
    grid = grid_tuple(proc.image_grid_thw)
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((2, 80, 24)).astype(np.float32)
    vit_pixels = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = np.asarray(
        jax.jit(lambda p, ids, pos, pv: base.module.apply({"params": p}, ids, pos, pv, grid))(
            base.params, ids, positions, proc.pixel_values
        )
    )
    fused = jax.jit(
        lambda p, ids, pos, pv, f, v: m.module.apply({"params": p}, ids, pos, pv, grid, f, v)
    )
    out = np.asarray(fused(m.params, ids, positions, proc.pixel_values, feats, vit_pixels))
    np.testing.assert_array_equal(out, ref)  # fresh gates: exactly the base model

    ag.save(m, tmp_path / "native")
    back = ag.load(tmp_path / "native")
    assert back.config == cfg and back.tokenizer is not None
    assert jax.tree.structure(back.params) == jax.tree.structure(m.params)
    for x, y in zip(jax.tree.leaves(m.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ConfigError, match="ag.save"):
        ag.export_hf(m, tmp_path / "hf")


def test_composite_needs_a_glm_base(whisper_dir):
    with pytest.raises(ConfigError, match="base of an autoglm"):
        ag.load(whisper_dir[0], audio_encoder=whisper_dir[0])
