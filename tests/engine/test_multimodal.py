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


def test_media_errors_are_clear():
    engine = Engine(ag.init("tiny"), EngineConfig(max_model_len=64, num_pages=16))
    img = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(ValueError, match="does not accept image input"):
        engine.prepare_prompt({"messages": [], "images": [img]})
    with pytest.raises(ValueError, match="does not accept audio input"):
        engine.prepare_prompt({"messages": [], "audios": [_wav(440)]})
