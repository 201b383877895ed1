"""Compression of the composite (glm4v / autoglm) on image and audio batches: pruning ranks the
decoder on the activations the media produce, QAT export is exact with media inputs, the
compressed composite decodes in the engine as in the dense reference, and the fan-in init."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.compress import (
    PruneConfig,
    apply_plan,
    mask_params,
    measure_importance,
    plan_pruning,
)
from autoglm_jax.config.quant import QuantConfig, QuantRule
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.reference import dense_greedy_multimodal
from autoglm_jax.quant import export_quantized, qat_model, weight_bytes
from autoglm_jax.training import synthetic
from autoglm_jax.training.compress import calibration_batches, load_compress_recipe
from autoglm_jax.training.step import forward_kwargs, split_static


@pytest.fixture(scope="module")
def mm():
    # fan-in init: with 0.02 the tiny encoders' outputs are near constant, and a test that
    # dropped the media would still pass
    return ag.init("tiny-mm", seed=0, init="fan_in")


@pytest.fixture(scope="module")
def batches(mm):
    recipe = load_compress_recipe(
        None,
        {
            "name": "calib",
            "run_dir": "unused",
            "steps": 1,
            "data": {
                "seq_len": 48,
                "batch_size": 4,
                "seed": 3,
                "mode": "pad",
                "synthetic_tasks": ["image", "audio", "count"],
            },
        },
    )
    return calibration_batches(recipe, mm.tokenizer or _tok(), 2, mm.config)


def _tok():
    from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer

    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


def _logits(model, batch, params=None, media=True):
    arrays, grid = split_static(batch)
    if not media:
        arrays = {
            k: v
            for k, v in arrays.items()
            if k not in ("pixel_values", "input_features", "audio_rows")
        }
        grid = None
    arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
    module = model.module
    f = jax.jit(
        lambda p, a: module.apply({"params": p}, a["inputs"], **forward_kwargs(module, a, grid))
    )
    return np.asarray(f(model.params if params is None else params, arrays))


def test_batches_hold_images_and_audio(batches):
    keys = set().union(*batches)
    assert {"pixel_values", "image_grid_thw", "input_features", "audio_rows"} <= keys


def test_importance_sees_the_media(mm, batches):
    with_media = measure_importance(mm, batches)
    text_only = measure_importance(
        mm,
        [
            {k: v for k, v in b.items() if k in ("inputs", "segment_ids", "positions")}
            for b in batches
        ],
    )
    assert with_media.tokens == text_only.tokens
    diff = max(float(np.abs(a - b).max()) for a, b in zip(with_media.neurons, text_only.neurons))
    assert diff > 1e-4, "the image/audio activations did not change the ranking inputs"


def test_masked_equals_sliced_on_media_batches(mm, batches):
    imp = measure_importance(mm, batches)
    plan = plan_pruning(mm.config.text, imp, PruneConfig(flops_reduction=0.35))
    pruned = apply_plan(mm, plan)
    assert pruned.config.vision == mm.config.vision and pruned.config.audio == mm.config.audio
    masked = mask_params(mm.params, mm.config.text, plan, ("language_model",))
    for b in batches:
        want = _logits(mm, b, masked)
        got = _logits(pruned, b)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
        # the pruned decoder still depends on the media
        assert np.abs(got - _logits(pruned, b, media=False)).max() > 1e-3


@pytest.mark.parametrize(
    "quant",
    [
        QuantConfig(weights="int8", rules=()),
        QuantConfig(weights="int4", group_size=16, rules=(QuantRule("lm_head", "int8"),)),
        QuantConfig(weights="int8", rules=(), scope="all"),
    ],
    ids=["int8", "int4", "int8-all-stacks"],
)
def test_export_equals_qat_on_media_batches(mm, batches, quant):
    qat = qat_model(mm, quant)
    small = export_quantized(mm, quant)
    for b in batches:
        np.testing.assert_allclose(_logits(small, b), _logits(qat, b), atol=1e-5, rtol=0)
    lm = small.params["language_model"]
    assert lm["layers_0"]["mlp"]["down_proj"]["kernel"].dtype == jnp.int8
    assert lm["lm_head"]["kernel"].dtype == jnp.int8
    assert weight_bytes(small)["quantized"] > 0
    if quant.scope == "decoder":
        # the encoders and the fusion are outside the decoder: stored as they were
        for stack in ("visual", "audio_encoder", "fusion"):
            same = jax.tree.map(
                lambda a, b: bool((a == b).all()), mm.params[stack], small.params[stack]
            )
            assert all(jax.tree.leaves(same)), stack
    else:
        p = small.params
        for kernel in (
            p["visual"]["patch_embed"]["kernel"],
            p["visual"]["downsample"]["kernel"],
            p["audio_encoder"]["conv1"]["kernel"],
            p["audio_encoder"]["layers_0"]["fc1"]["kernel"],
            p["fusion"]["blocks_0"]["k_proj"]["kernel"],
            p["fusion"]["audio_projector"]["fc1"]["kernel"],
        ):
            assert kernel.dtype == jnp.int8
        # tables, norms and gates stay float
        assert p["visual"]["position_embedding"].dtype == jnp.float32
        assert p["fusion"]["blocks_0"]["attn_alpha"].dtype == jnp.float32
        # saved and loaded back: the config says scope "all", the load is still exact
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            ag.save(small, d)
            back = ag.load(d)
        assert back.config.text.quant.scope == "all"
        np.testing.assert_array_equal(_logits(back, batches[0]), _logits(small, batches[0]))


@pytest.mark.parametrize("scope", ["decoder", "all"])
def test_engine_int8_composite_matches_dense_greedy_with_image_and_audio(mm, scope):
    small = export_quantized(mm, QuantConfig(weights="int8", rules=(), scope=scope))
    small = dataclasses.replace(small, tokenizer=_tok())
    image = synthetic.image_sample(5, 0).messages[0]["content"][0]
    audio = synthetic.audio_sample(5, 1).messages[0]["content"][0]
    prompt = {
        "messages": [
            {
                "role": "user",
                "content": [image, audio, {"type": "text", "text": "What do you see and hear?"}],
            }
        ]
    }
    engine = Engine(
        small,
        EngineConfig(
            max_num_seqs=2,
            max_num_batched_tokens=64,
            page_size=8,
            max_model_len=96,
            num_pages=32,
            enable_prefix_caching=False,
        ),
    )
    ids, mm_inputs = engine.prepare_prompt(prompt)
    assert mm_inputs.pixel_values is not None and mm_inputs.audio_features is not None
    out = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[
        0
    ]
    want = dense_greedy_multimodal(
        small,
        ids,
        8,
        pixel_values=mm_inputs.pixel_values,
        image_grid_thw=mm_inputs.image_grid_thw,
        input_features=mm_inputs.audio_features,
        audio_frames=mm_inputs.audio_frames,
    )
    assert list(out.outputs[0].token_ids) == want


def test_fan_in_init_scales_kernels_and_nothing_else():
    hf = ag.init("tiny-mm", seed=0)
    fan = ag.init("tiny-mm", seed=0, init="fan_in")
    assert jax.tree.structure(hf.params) == jax.tree.structure(fan.params)
    flat_hf = dict(jax.tree_util.tree_flatten_with_path(hf.params)[0])
    checked = 0
    for path, x in jax.tree_util.tree_flatten_with_path(fan.params)[0]:
        y = flat_hf[path]
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            # every kernel here contracts a leading run of its axes ([D, N, H] one, [N, H, D]
            # and the conv stems' [X, C, D] two, the vision downsample three)
            if x.size >= 256:
                fits = [
                    abs(float(jnp.std(x)) * math.sqrt(math.prod(x.shape[:k])) - 1)
                    for k in range(1, x.ndim)
                ]
                assert min(fits) < 0.15, (name, x.shape, float(jnp.std(x)))
                checked += 1
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert checked > 20
    with pytest.raises(ValueError, match="init must be one of"):
        ag.init("tiny", init="xavier")
