"""The engine with images and audio (tiny-mm AutoGLM) against the dense no-cache forward."""

import dataclasses
import io
import wave

import jax
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.engine.reference import dense_greedy_multimodal
from autoglm_jax.engine.runner import StepShape
from autoglm_jax.engine.sampling import SamplingArrays
from autoglm_jax.engine.step_plan import SeqStep
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer


def _wav(freq, seconds=2.0, rate=16000):
    t = np.arange(int(rate * seconds)) / rate
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(2 * np.pi * freq * t) * 20000).astype(np.int16).tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def model():
    m = ag.init("tiny-mm", seed=0, init="fan_in")  # fan-in: the media visibly matter

    def open_gates(path, x):  # trained-like gates, so audio changes the output
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return x + 0.7 if name.endswith("alpha") else x

    return dataclasses.replace(
        m,
        params=jax.tree_util.tree_map_with_path(open_gates, m.params),
        tokenizer=Tokenizer.from_dir(TINY_TOKENIZER_DIR),
    )


def _chat(*parts):
    return {"messages": [{"role": "user", "content": list(parts)}]}


def test_images_audio_and_text_equal_dense_greedy(model):
    rng = np.random.RandomState(0)
    img_a = rng.randint(0, 255, (56, 84, 3)).astype(np.uint8)
    img_b = rng.randint(0, 255, (70, 56, 3)).astype(np.uint8)
    text = {"type": "text", "text": "what is this"}
    prompts = [
        _chat({"type": "image", "image": img_a}, text),
        _chat({"type": "image", "image": img_b}, text),  # same text, other image
        _chat({"type": "audio", "audio": _wav(440)}, text),
        _chat({"type": "audio", "audio": _wav(880)}, {"type": "image", "image": img_a}, text),
        _chat(text),
    ]
    cfg = EngineConfig(
        max_num_seqs=4, max_num_batched_tokens=32, page_size=4, max_model_len=256, num_pages=64
    )
    engine = Engine(model, cfg)
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        ids, mm = engine.prepare_prompt(prompt)
        ref = dense_greedy_multimodal(
            model,
            ids,
            5,
            pixel_values=mm.pixel_values,
            image_grid_thw=mm.image_grid_thw,
            input_features=mm.audio_features,
            audio_frames=mm.audio_frames,
        )
        assert out.token_ids == ref
    assert engine.stats()["free_pages"] == engine.stats()["num_pages"]
    # The media matter: without the audio the same text decodes differently.
    ids, mm = engine.prepare_prompt(prompts[2])
    assert dense_greedy_multimodal(model, ids, 5) != outs[2].token_ids


def test_warmup_compiles_image_steps_the_tower_for_a_screen_size_and_audio(model):
    """A phone agent's requests each hold one screenshot of a fixed size: after
    warmup(image_sizes=...) they compile nothing, nor do voice requests of any length the
    model takes. (That image and text steps of the model, which share programs, equal the
    dense forward is the test above.)"""
    rng = np.random.RandomState(1)
    screens = [rng.randint(0, 255, (56, 84, 3)).astype(np.uint8) for _ in range(2)]
    text = {"type": "text", "text": "tap the icon"}
    prompts = [_chat({"type": "image", "image": s}, text) for s in screens] + [_chat(text)]
    # tiny-mm takes up to 60 s of audio: one or two 30 s windows
    assert model.config.audio.max_windows == 2
    prompts += [_chat({"type": "audio", "audio": _wav(440, seconds)}, text) for seconds in (2, 40)]
    cfg = EngineConfig(
        max_num_seqs=4, max_num_batched_tokens=32, page_size=4, max_model_len=128, num_pages=64
    )
    engine = Engine(model, cfg)
    runner = engine.runner
    # Buckets 16 and 32 (XLA path: no decode programs), one program each for text and image
    # steps; + penalty priming, the audio memory of 1 and 2 windows, its write and reset in
    # the CGA memory pool, and the tower.
    assert runner.step_shapes == [StepShape(16, False), StepShape(32, False)]
    assert engine.warmup(image_sizes=[(56, 84)]) == 2 + 1 + 2 + 2 + 1
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    assert engine.stats()["compilations_after_warmup"] == 0
    assert all(len(out.token_ids) == 4 for out in outs) and len(outs) == 5

    # Another screen size compiles its tower when met; a text model has no tower to warm.
    engine.generate([_chat({"type": "image", "image": screens[0][:42]}, text)], params)
    assert engine.stats()["compilations_after_warmup"] == 1
    with pytest.raises(ValueError, match="no vision tower"):
        Engine(ag.init("tiny", seed=0), cfg).warmup(image_sizes=[(56, 84)])


def test_every_step_of_a_multimodal_model_carries_t_image_rows(model):
    runner = Engine(model, EngineConfig(max_num_seqs=4, max_num_batched_tokens=32)).runner
    width = model.config.text.d_model
    seq = SeqStep(
        token_ids=np.array([model.config.image_token_id], np.int32),
        positions=np.zeros((3, 1), np.int32),
        slot=0,
        pages=np.array([1], np.int32),
        kv_len=1,
        samples=False,
        image_embeds=np.ones((1, width), np.float32),
        image_index=np.array([0], np.int32),
    )
    sampling = SamplingArrays.build([], [], [], 4)
    x = runner.build_inputs([seq], sampling)
    assert x.mm_embeds.shape == (16, width)
    np.testing.assert_array_equal(x.mm_embeds[:2, :3], [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(x.mm_index[:2], [0, -1])
    text = runner.build_inputs(
        [dataclasses.replace(seq, image_embeds=None, image_index=None)], sampling
    )
    assert text.mm_embeds.shape == (16, width) and not np.asarray(text.mm_embeds).any()
    assert (text.mm_index == -1).all()
    with pytest.raises(ValueError, match="image rows are 3 wide"):
        runner.build_inputs(
            [dataclasses.replace(seq, image_embeds=np.ones((1, 3), np.float32))],
            sampling,
        )


def test_media_errors_are_clear():
    engine = Engine(ag.init("tiny"), EngineConfig(max_model_len=64, num_pages=16))
    img = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(ValueError, match="does not accept image input"):
        engine.prepare_prompt({"messages": [], "images": [img]})
    with pytest.raises(ValueError, match="does not accept audio input"):
        engine.prepare_prompt({"messages": [], "audios": [_wav(440)]})
