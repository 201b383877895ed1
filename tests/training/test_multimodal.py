"""Image/audio training: the synthetic media tasks through the real preprocessing, chat JSONL
with image/audio files, the same preparation as serving, and training only the CGA fusion."""

import base64
import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import autoglm_jax as ag
from autoglm_jax.processing.audio import load_audio, mel_filter_bank, read_wav
from autoglm_jax.processing.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, process_images
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from autoglm_jax.training import data as D
from autoglm_jax.training import media as M
from autoglm_jax.training import step as st
from autoglm_jax.training import synthetic as S
from autoglm_jax.training.recipe import DataRecipe, OptimRecipe

from . import np_init


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def mm():
    """tiny-mm (GLM-4.1V text + vision, Whisper, ViT, CGA) with numpy-drawn weights."""
    return np_init("tiny-mm", seed=0)


@pytest.fixture(scope="module")
def proc(mm, tok):
    return M.MultimodalProcessor(mm.config, tok)


def _recipe(**kw):
    base = dict(
        source="synthetic",
        synthetic_tasks=("image", "audio"),
        seq_len=48,
        batch_size=4,
        mode="pad",
        prefetch=0,
        synthetic_size=1000,
        seed=3,
    )
    return DataRecipe(**{**base, **kw})


# --- the synthetic media tasks through the real preprocessing ------------------------------------


def _unpatchify(pixel_values, grid, merge=2, patch=14):
    """pixel_values [h*w, 3*2*14*14] of one image (merge-block-major patches) -> uint8-scale
    RGB [h*14, w*14, 3] of its first frame, de-normalized."""
    _, h, w = grid
    x = pixel_values.reshape(h // merge, w // merge, merge, merge, 3, 2, patch, patch)[..., 0, :, :]
    x = x.transpose(0, 2, 5, 1, 3, 6, 4).reshape(h * patch, w * patch, 3)
    return (x * np.asarray(OPENAI_CLIP_STD) + np.asarray(OPENAI_CLIP_MEAN)) * 255.0


def test_image_samples_survive_preprocessing_with_their_labels():
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # of the bounding box
    seen = set()
    for i in range(16):
        s = S.image_sample(11, i)
        proc = process_images([s.messages[0]["content"][0]["image"]])
        assert proc.image_grid_thw.tolist() == [[1, 6, 6]]
        rgb = _unpatchify(proc.pixel_values, proc.image_grid_thw[0])
        assert rgb.shape == (84, 84, 3)
        assert np.abs(rgb[0, 0] - 128).max() < 1.0  # the grey background survives
        fg = np.abs(rgb - 128.0).max(-1) > 40
        blobs, n = ndimage.label(fg)
        assert n == s.labels["count"], (i, s.labels)
        # colour: the middle of every blob is the label's colour
        for k, sl in enumerate(ndimage.find_objects(blobs), start=1):
            core = ndimage.binary_erosion(blobs == k, iterations=2)
            assert np.abs(rgb[core].mean(0) - S.COLOURS[s.labels["colour"]]).max() < 6, (
                i,
                s.labels,
            )
            ratio = (blobs[sl] == k).mean()
            assert min(fill, key=lambda f: abs(fill[f] - ratio)) == s.labels["shape"], (i, ratio)
        # position: the cells of the blobs' centres
        centres = ndimage.center_of_mass(fg, blobs, range(1, n + 1))
        cells = sorted(S.CELLS[int(y >= 42) * 2 + int(x >= 42)] for y, x in centres)
        assert cells == sorted(s.labels["cells"]), (i, centres, s.labels)
        q, a = s.messages[0]["content"][1]["text"], s.answer
        seen.add(q)
        want = {
            "How many shapes are there?": str(s.labels["count"]),
            "Which shape is drawn?": s.labels["shape"],
            "What colour are the shapes?": s.labels["colour"],
            "Where is the shape?": s.labels["cells"][0],
        }[q]
        assert a == want and s.messages[1] == {"role": "assistant", "content": a}
    assert len(seen) >= 3


def _beeps_and_pitch_from_features(feats):
    """(onsets, dominant frequency in Hz) of a log-mel window [80, 3000]."""
    clip = feats[:, :200]  # 2 s at 100 frames/s
    level = clip.max(0)
    loud = level > (level.min() + level.max()) / 2
    onsets = int(np.count_nonzero(np.diff(loud.astype(int)) == 1) + loud[0])
    band = int(np.argmax(clip[:, loud].mean(1)))
    centre = np.linspace(0, 8000, 201)[np.argmax(mel_filter_bank(80)[:, band])]
    return onsets, centre


def test_audio_samples_survive_preprocessing_with_their_labels():
    for i in range(10):
        s = S.audio_sample(4, i)
        part = s.messages[0]["content"][0]
        assert part["type"] == "audio" and part["audio"][:4] == b"RIFF"
        # the WAV bytes decode to the generated waveform (16-bit rounding)
        wave, sr = read_wav(part["audio"])
        ref = S.audio_waveform(4, i)[0]
        assert sr == S.SAMPLE_RATE and np.abs(wave - ref).max() < 1e-4
        # the waveform's energy envelope counts the beeps, its spectrum names the pitch
        loud = np.convolve(np.abs(wave) > 0.2, np.ones(80), "same") > 0
        assert np.count_nonzero(np.diff(loud.astype(int)) == 1) == s.labels["beeps"]
        # and so do the Whisper features the model gets
        feats = load_audio(part["audio"])
        assert feats.shape == (1, 80, 3000)
        onsets, centre = _beeps_and_pitch_from_features(feats[0])
        assert onsets == s.labels["beeps"], (i, s.labels)
        nearest = min(S.PITCHES, key=lambda p: abs(np.log(S.PITCHES[p] / centre)))
        assert nearest == s.labels["pitch"], (i, centre, s.labels)
        want = {
            "How many beeps do you hear?": str(s.labels["beeps"]),
            "Is the pitch low, mid or high?": s.labels["pitch"],
        }
        assert s.answer == want[s.messages[0]["content"][1]["text"]]


def test_synthetic_media_is_deterministic_by_seed(tok, proc):
    a = S.image_sample(2, 5).messages[0]["content"][0]["image"]
    np.testing.assert_array_equal(a, S.image_sample(2, 5).messages[0]["content"][0]["image"])
    assert not np.array_equal(a, S.image_sample(3, 5).messages[0]["content"][0]["image"])
    assert (
        S.audio_sample(2, 5).messages[0]["content"][0]["audio"]
        == S.audio_sample(2, 5).messages[0]["content"][0]["audio"]
    )
    assert [S.sample(1, i, ("image", "audio", "add")).task for i in range(12)] == [
        S.sample(1, i, ("image", "audio", "add")).task for i in range(12)
    ]
    assert {S.sample(1, i, ("image", "audio", "add")).task for i in range(12)} == {
        "image",
        "audio",
        "add",
    }
    # whole batches, media arrays included, repeat exactly; another seed differs
    b1, b2 = (next(iter(D.make_dataset(_recipe(), tok, media_processor=proc)[0])) for _ in range(2))
    assert (
        b1.keys() == b2.keys() >= {"pixel_values", "input_features", "audio_rows", "image_grid_thw"}
    )
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])
    b3 = next(iter(D.make_dataset(_recipe(seed=4), tok, media_processor=proc)[0]))
    assert not np.array_equal(b1["inputs"], b3["inputs"])
    # the iterator state (saved with checkpoints) resumes media batches exactly
    it = iter(D.make_dataset(_recipe(), tok, media_processor=proc)[0])
    next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = next(it)
    it2 = iter(D.make_dataset(_recipe(), tok, media_processor=proc)[0])
    it2.set_state(state)
    got = next(it2)
    for k in want:
        np.testing.assert_array_equal(want[k], got[k])


def test_recipe_and_model_checks(mm, tok):
    from autoglm_jax.config import ConfigError
    from autoglm_jax.training.recipe import TrainRecipe

    with pytest.raises(ConfigError, match="data.mode.*the audio task"):
        TrainRecipe(data=DataRecipe(synthetic_tasks=("audio",), mode="pack")).validate()
    with pytest.raises(ConfigError, match="optim.trainable.*not both"):
        TrainRecipe(optim=OptimRecipe(train="cga", trainable=("fusion/*",))).validate()
    text = np_init(
        ag.load_config("tiny").replace(text=ag.load_config("tiny").text.replace(num_layers=1))
    )
    with pytest.raises(ConfigError, match="optim.train.*does not have"):
        st.make_optimizer(OptimRecipe(train="cga"), 10, text.params)
    # the synthetic media tasks need the matching encoder
    with pytest.raises(ConfigError, match="the audio task needs a model with an audio encoder"):
        D.make_dataset(_recipe(synthetic_tasks=("audio",)), tok)
    no_audio = M.MultimodalProcessor(mm.config.replace(audio=None), tok)
    with pytest.raises(ConfigError, match="the audio task needs"):
        D.make_dataset(_recipe(synthetic_tasks=("audio",)), tok, media_processor=no_audio)


# --- the same preparation as serving -----------------------------------------------------------


def test_training_examples_are_prepared_like_serving_requests(mm, tok, proc):
    from autoglm_jax.engine import Engine, EngineConfig

    cfg = mm.config
    batch = next(iter(D.make_dataset(_recipe(seq_len=64), tok, media_processor=proc)[0]))
    engine = Engine(
        dataclasses.replace(mm, tokenizer=tok),
        EngineConfig(max_num_seqs=1, num_pages=8, max_model_len=128, max_num_batched_tokens=64),
    )
    kinds, image_i = set(), 0
    n_images = len(batch["image_grid_thw"])
    assert n_images == 4 and batch["pixel_values"].shape == (4 * 36, 1176)
    for row in range(4):
        # the row's example: same shuffle as the dataset (seeded), so regenerate it by index
        index = int(D.grain.MapDataset.range(1000).shuffle(seed=3)[row])
        s = S.sample(3, index, ("image", "audio"))
        kinds.add(s.task)
        ids, mmi = engine.prepare_prompt({"messages": [s.messages[0]]})
        n = len(ids)
        inputs = batch["inputs"][row]
        np.testing.assert_array_equal(inputs[:n], ids)  # placeholders expanded identically
        np.testing.assert_array_equal(batch["positions"][row][:, :n], mmi.positions)
        # the loss covers the answer (and its end token) only
        masked = batch["targets"][row][batch["loss_mask"][row] > 0]
        assert tok.decode(masked).strip() == s.answer + "<|endoftext|>"
        # (the prompt ends in "<|assistant|>\n"; that "\n" opens the rendered turn)
        assert batch["loss_mask"][row][: n - 2].sum() == 0
        if s.task == "image":
            assert np.count_nonzero(inputs == cfg.image_token_id) == 9
            np.testing.assert_array_equal(batch["image_grid_thw"][image_i], [1, 6, 6])
            np.testing.assert_array_equal(
                batch["pixel_values"][image_i * 36 : (image_i + 1) * 36], mmi.pixel_values
            )
            image_i += 1
            assert batch["audio_rows"][row] == -1
            assert batch["audio_frames"][row] == 0  # a padding window: nothing to attend
        else:
            assert batch["audio_rows"][row] == row
            np.testing.assert_array_equal(batch["input_features"][row], mmi.audio_features[0])
            assert batch["audio_frames"][row] == mmi.audio_frames[0]
            assert 0 < batch["audio_frames"][row] < 300  # the synthetic clips are ~1 s
    assert kinds == {"image", "audio"}
    # padding images after the real ones (zeros, same grid: one compiled shape)
    assert not batch["pixel_values"][image_i * 36 :].any()
    assert (batch["image_grid_thw"] == [1, 6, 6]).all()


# --- chat JSONL with media files -----------------------------------------------------------------


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 60, 3), colour, np.uint8)).save(path)
    return path


def _chat(parts, answer):
    return {
        "messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]
    }


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_chat_jsonl_with_image_and_audio_files(tmp_path, tok, proc):
    _png(tmp_path / "img" / "red.png", (200, 30, 30))
    wav = S.audio_sample(0, 1).messages[0]["content"][0]["audio"]
    (tmp_path / "snd").mkdir()
    (tmp_path / "snd" / "b.wav").write_bytes(wav)
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 30, 3), 60, np.uint8)).save(buf, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    records = [
        _chat(
            [{"type": "image", "path": "img/red.png"}, {"type": "text", "text": "colour?"}], "red"
        ),
        _chat([{"type": "audio", "path": "snd/b.wav"}, {"type": "text", "text": "beeps?"}], "2"),
        _chat(
            [
                {"type": "image_url", "image_url": {"url": data_uri}},
                {
                    "type": "input_audio",
                    "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
                },
                {"type": "text", "text": "both?"},
            ],
            "yes",
        ),
        {
            "messages": [
                {"role": "user", "content": "plain text"},
                {"role": "assistant", "content": "ok"},
            ]
        },
    ]
    f = _write(tmp_path / "chat.jsonl", records)
    recipe = DataRecipe(
        source="chat",
        paths=(str(f),),
        seq_len=96,
        batch_size=4,
        mode="pad",
        shuffle=False,
        prefetch=0,
    )
    ds, info = D.make_dataset(recipe, tok, media_processor=proc)
    assert (info.records, info.image_records, info.audio_records) == (4, 2, 2)
    b = next(iter(ds))
    red = process_images([str(tmp_path / "img" / "red.png")])
    grey = process_images([data_uri])
    grids = b["image_grid_thw"]
    np.testing.assert_array_equal(
        grids[:2], np.concatenate([red.image_grid_thw, grey.image_grid_thw])
    )
    n_red = int(red.image_grid_thw.prod())
    np.testing.assert_array_equal(b["pixel_values"][:n_red], red.pixel_values)
    np.testing.assert_array_equal(
        b["pixel_values"][n_red : n_red + len(grey.pixel_values)], grey.pixel_values
    )
    np.testing.assert_array_equal(b["audio_rows"], [-1, 1, 2, -1])
    np.testing.assert_array_equal(b["input_features"][1], load_audio(wav)[0])
    np.testing.assert_array_equal(b["input_features"][2], b["input_features"][1])
    # image tokens per row follow the grids; the text row is an ordinary chat example
    per_row = (b["inputs"] == proc.config.image_token_id).sum(1)
    assert per_row.tolist() == [
        int(red.image_grid_thw.prod()) // 4,
        0,
        int(grey.image_grid_thw.prod()) // 4,
        0,
    ]
    ids, _ = D.tokenize_chat(tok, records[3]["messages"])
    np.testing.assert_array_equal(b["inputs"][3][: len(ids) - 1], ids[:-1])
    assert tok.decode(b["targets"][0][b["loss_mask"][0] > 0]).strip() == "red<|endoftext|>"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image", "path": "img/missing.png"},
        {"type": "image_url", "image_url": {"url": "img/missing.png"}},
        {"type": "audio", "audio": "snd/missing.wav"},
        {"type": "input_audio", "input_audio": {"path": "snd/missing.wav"}},
    ],
)
def test_missing_media_file_names_the_path_and_line(tmp_path, part):
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    f = _write(tmp_path / "mm.jsonl", [ok, _chat([part], "a")])
    name = "img/missing.png" if "image" in part["type"] else "snd/missing.wav"
    with pytest.raises(
        D.DataError,
        match=rf"{f}:2: {part['type']} file not found: "
        rf"{tmp_path / name}",
    ):
        D.JsonlSource([f], "chat", allow_media=True)


def test_media_errors_at_read_time_name_the_path(tmp_path, tok, proc):
    img = _png(tmp_path / "img" / "x.png", (0, 0, 255))
    f = _write(tmp_path / "mm.jsonl", [_chat([{"type": "image", "path": "img/x.png"}], "blue")])
    recipe = DataRecipe(
        source="chat", paths=(str(f),), seq_len=64, batch_size=1, mode="pad", prefetch=0
    )
    ds, _ = D.make_dataset(recipe, tok, media_processor=proc)
    img.unlink()  # gone after the scan
    with pytest.raises(D.DataError, match=rf"{f}:1: .*{img}"):
        next(iter(ds))
    # a sequence length that would cut image tokens is an error, not a silent misalignment
    _png(img, (0, 0, 255))
    short = dataclasses.replace(recipe, seq_len=8)
    with pytest.raises(D.DataError, match=rf"{f}:1: .*would cut .* image tokens"):
        next(iter(D.make_dataset(short, tok, media_processor=proc)[0]))
    # media with a text-only model, or packed, is refused up front
    with pytest.raises(D.DataError, match=rf"{f}:1: record has image parts, but the model"):
        D.make_dataset(recipe, tok)
    with pytest.raises(D.DataError, match="data.mode"):
        D.make_dataset(dataclasses.replace(recipe, mode="pack"), tok, media_processor=proc)


# --- training only the CGA fusion ----------------------------------------------------------------


def test_cga_only_training_on_the_audio_task(mm, tok, proc):
    recipe = _recipe(synthetic_tasks=("audio",), seq_len=40, prefetch=2, seed=0)
    it = iter(D.make_dataset(recipe, tok, media_processor=proc)[0])
    held = st.put_batch(
        next(
            iter(D.make_dataset(dataclasses.replace(recipe, seed=99), tok, media_processor=proc)[0])
        ),
        None,
    )
    steps = 30
    optim = OptimRecipe(train="cga", lr=1e-2, warmup_steps=0, weight_decay=0.0)
    tx, _ = st.make_optimizer(optim, steps, mm.params)
    mask = st.trainable_mask(mm.params, st.trainable_patterns(optim))
    assert st.count_params(mm.params, mask) == st.count_params(mm.params["fusion"])
    state, _ = st.init_state(jax.tree.map(jnp.copy, mm.params), tx, 0)
    step = st.make_train_step(mm.module, tx, trainable=mask)
    evaluate = st.make_eval_step(mm.module)
    before = evaluate(mm.params, held)
    history = []
    for _ in range(steps):
        state, m = step(state, st.put_batch(next(it), None))
        history.append(float(m["loss"]))
    assert len(step.compiled) == 1  # every batch has the same shapes
    after = evaluate(state.params, held)
    print(
        f"\nCGA-only, {steps} steps: train loss {np.mean(history[:3]):.3f} -> "
        f"{np.mean(history[-3:]):.3f}; held-out CE {float(before['ce']):.3f} -> "
        f"{float(after['ce']):.3f}, token accuracy {float(after['accuracy']):.3f}"
    )
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.3
    assert float(after["ce"]) < float(before["ce"]) - 0.3
    # only fusion/* changed (all of it but the ViT projector, which no input reached);
    # everything else is bit-identical
    for (path, new), old in zip(
        jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(mm.params)
    ):
        name = st.path_str(path)
        moved = name.startswith("fusion/") and not name.startswith("fusion/vit_projector/")
        assert np.array_equal(new, old) != moved, name
    for j in range(2):
        block = state.params["fusion"][f"blocks_{j}"]
        assert np.abs(block["attn_alpha"]).max() > 1e-3 and np.abs(block["mlp_alpha"]).max() > 1e-3
    # the audio is what changed the model: without it (no audio rows) the trained model is
    # exactly the base model
    silent = {**held, "audio_rows": jnp.full_like(held["audio_rows"], -1)}
    assert float(evaluate(state.params, silent)["ce"]) == float(evaluate(mm.params, silent)["ce"])
    it.close()


def test_image_spread_tells_a_seeing_tower_from_a_collapsed_one(mm, tok, proc):
    from autoglm_jax.training.vision_health import COLLAPSED, image_spread

    recipe = _recipe(synthetic_tasks=("image",), seq_len=40, prefetch=0, seed=1)
    it = iter(D.make_dataset(recipe, tok, media_processor=proc)[0])
    batch = next(it)
    real = int((batch["inputs"] == mm.config.image_token_id).sum())
    fresh = image_spread(mm.module, mm.params, batch)
    assert fresh is not None and fresh > 0.1  # different images, different embeddings

    # by hand on the real images' rows only (the batch's padding images are left out)
    grid = tuple(tuple(int(v) for v in g) for g in batch["image_grid_thw"])
    out = np.asarray(
        mm.module.apply(
            {"params": mm.params},
            jnp.asarray(batch["pixel_values"]),
            grid,
            method=lambda m, pv, g: m.visual(pv, g),
        )
    )[:real]
    assert fresh == pytest.approx(out.std(0).mean() / np.abs(out).mean(), rel=1e-4)

    # a tower whose last kernel is zero answers the same (zeros) for every image, as a
    # collapsed one does
    params = jax.tree.map(jnp.copy, mm.params)
    down = params["visual"]["merger"]["mlp"]["down_proj"]
    down["kernel"] = jnp.zeros_like(down["kernel"])
    assert image_spread(mm.module, params, batch) < COLLAPSED
    text_only = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    assert image_spread(mm.module, mm.params, text_only) is None
    it.close()
