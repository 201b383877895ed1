"""Synthetic generator determinism and labels, chat tokenization and loss masks, JSONL errors,
and the Grain pipeline (packing, padding, iterator state)."""

import json

import numpy as np
import pytest
from scipy import ndimage

from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from autoglm_jax.training import data as D
from autoglm_jax.training import synthetic as S
from autoglm_jax.training import tokens
from autoglm_jax.training.recipe import DataRecipe


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


# --- synthetic ---------------------------------------------------------------------------------


def test_text_samples_are_deterministic_with_known_values():
    # Pinned values: a change here means old runs' data changed.
    got = [
        (s.task, s.messages[0]["content"], s.answer)
        for s in (S.text_sample(0, i) for i in range(5))
    ]
    assert got == [
        ("add", "63+51=", "114"),
        ("reverse", "Reverse: hecgbhha", "ahhbgceh"),
        ("add", "8+28=", "36"),
        ("reverse", "Reverse: hgfcechc", "chcecfgh"),
        ("copy", "Copy: dbgdedag", "dbgdedag"),
    ]
    assert S.text_sample(7, 2).answer == "bdd"
    assert [S.text_sample(3, i) for i in range(20)] == [S.text_sample(3, i) for i in range(20)]
    assert [S.text_sample(3, i).messages for i in range(20)] != [
        S.text_sample(4, i).messages for i in range(20)
    ]


@pytest.mark.parametrize("task", S.TEXT_TASKS)
def test_text_answers_follow_from_the_prompt(task):
    for i in range(50):
        s = S.text_sample(1, i, tasks=(task,), max_len=6)
        q, a, lab = s.messages[0]["content"], s.answer, s.labels
        assert s.task == task and s.messages[1] == {"role": "assistant", "content": a}
        if task == "count":
            assert q == f"How many {lab['char']} in {lab['string']}?"
            assert a == str(lab["string"].count(lab["char"]))
        elif task == "copy":
            assert q == f"Copy: {a}" and 1 <= len(a) <= 6
        elif task == "reverse":
            assert q == f"Reverse: {a[::-1]}"
        else:
            x, y = q.rstrip("=").split("+")
            assert int(a) == int(x) + int(y) == lab["sum"]
    with pytest.raises(ValueError, match="unknown synthetic task"):
        S.text_sample(0, 0, tasks=("multiply",))


def test_image_samples_match_their_labels():
    fill = {"circle": np.pi * 0.45**2, "square": 0.8**2, "triangle": 0.8 * 0.45 * 0.8}
    for i in range(12):
        s = S.image_sample(5, i)
        img = s.messages[0]["content"][0]["image"]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, S.image_sample(5, i).messages[0]["content"][0]["image"])
        fg = np.any(img != 128, axis=-1)
        _, n = ndimage.label(fg)
        assert n == s.labels["count"], (i, s.labels)
        colours = {tuple(c) for c in img[fg]}
        assert colours == {S.COLOURS[s.labels["colour"]]}
        # each blob's fill ratio of its bounding box identifies the shape
        blobs, _ = ndimage.label(fg)
        for sl in ndimage.find_objects(blobs):
            box = fg[sl]
            side = max(box.shape) / 0.8
            ratio = box.sum() / side**2
            best = min(fill, key=lambda k: abs(fill[k] - ratio))
            assert best == s.labels["shape"], (i, ratio, s.labels)
        assert s.answer in (str(s.labels["count"]), s.labels["shape"], s.labels["colour"])


def test_audio_samples_match_their_labels():
    for i in range(10):
        s = S.audio_sample(2, i)
        wave, labels, _, _ = S.audio_waveform(2, i)
        sr = S.SAMPLE_RATE
        assert labels == s.labels
        np.testing.assert_array_equal(wave, S.audio_waveform(2, i)[0])
        loud = np.convolve(np.abs(wave) > 0.2, np.ones(80), "same") > 0
        onsets = np.count_nonzero(np.diff(loud.astype(int)) == 1)
        assert onsets == s.labels["beeps"], (i, s.labels)
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)]
        assert abs(peak - S.PITCHES[s.labels["pitch"]]) < 20, (peak, s.labels)


# --- tokenization and masks ----------------------------------------------------------------------


CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def test_loss_mask_covers_assistant_turns_and_their_stop_token(tok):
    ids, mask = D.tokenize_chat(tok, CONVO)
    assert tok.decode(ids) == (
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello"
        "<|user|>\n2+2?<|assistant|>\n4<|endoftext|>"
    )
    # the masked tokens, run by run
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(int(i))
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    runs.append(tok.decode(cur))
    assert runs == ["\nHello<|user|>", "\n4<|endoftext|>"]


def test_fast_and_prefix_rendering_spans_agree(tok):
    ids, mask = D.tokenize_chat(tok, CONVO)
    text = tok.apply_chat_template(CONVO, add_generation_prompt=False) + "<|endoftext|>"
    enc = tok.backend.encode(text, add_special_tokens=False)
    spans = tokens._spans_by_prefix(tok, CONVO, text, enc, "test")
    fast = np.nonzero(np.diff(np.concatenate([[0], mask, [0]])))[0].reshape(-1, 2)
    # the fast path also masks the closing stop token: one past the content span
    assert [(s, e) for s, e in spans] == [(int(s), int(e) - 1) for s, e in fast]


# --- JSONL sources ------------------------------------------------------------------------------


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def test_malformed_line_names_file_and_line(tmp_path):
    f = _write(tmp_path / "chat.jsonl", [GOOD, GOOD, "{not json", GOOD])
    with pytest.raises(D.DataError, match=rf"{f}:3: invalid JSON"):
        D.JsonlSource([f], "chat")
    f2 = _write(tmp_path / "c2.jsonl", [GOOD, {"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(D.DataError, match=rf"{f2}:2: no assistant message"):
        D.JsonlSource([f2], "chat")
    f3 = _write(tmp_path / "t.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(D.DataError, match=rf"{f3}:2: expected a string field `text`"):
        D.JsonlSource([f3], "text")


def test_skip_bad_records_skips_and_counts(tmp_path):
    f = _write(
        tmp_path / "chat.jsonl",
        [
            GOOD,
            "{not json",
            "",
            GOOD,
            "[1, 2]",
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a2"},
                ]
            },
        ],
    )
    src = D.JsonlSource([f], "chat", skip_bad_records=True)
    assert len(src) == 3 and src.info.skipped == 2 and src.info.records == 3
    assert src.info.skipped_examples[0].startswith(f"{f}:2:")
    assert src[2]["where"] == f"{f}:6" and src[2]["record"]["messages"][1]["content"] == "a2"


def _media_record(kind, path):
    part = {"type": kind, kind: path}
    return {
        "messages": [
            {"role": "user", "content": [part, {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": "a cat"},
        ]
    }


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_missing_media_file_names_the_path(tmp_path, kind):
    f = _write(tmp_path / "mm.jsonl", [GOOD, _media_record(kind, "media/missing.bin")])
    with pytest.raises(
        D.DataError,
        match=rf"{f}:2: {kind} file not found: "
        rf"{tmp_path / 'media' / 'missing.bin'}",
    ):
        D.JsonlSource([f], "chat")
    src = D.JsonlSource([f], "chat", skip_bad_records=True)
    assert src.info.skipped == 1 and len(src) == 1


def test_media_records_need_a_media_processor(tmp_path, tok):
    (tmp_path / "cat.png").write_bytes(b"\x89PNG fake")
    f = _write(tmp_path / "mm.jsonl", [GOOD, _media_record("image_url", {"url": "cat.png"})])
    with pytest.raises(
        D.DataError,
        match=rf"{f}:2: record has image parts, but the model has "
        "no image/audio encoder",
    ):
        D.JsonlSource([f], "chat")
    # the hook: in a dataset with media every record goes through the processor, media file
    # paths made absolute (the real one, media.MultimodalProcessor, is tested in
    # test_multimodal.py)
    seen = []

    def processor(messages, *, where):
        part = messages[0]["content"]
        seen.append((part[0]["image"] if isinstance(part, list) else part, where))
        return {"input_ids": np.arange(10, 20), "loss_mask": np.r_[np.zeros(5), np.ones(5)]}

    recipe = DataRecipe(
        source="chat",
        paths=(str(f),),
        seq_len=16,
        batch_size=2,
        shuffle=False,
        mode="pad",
        prefetch=0,
    )
    ds, info = D.make_dataset(recipe, tok, media_processor=processor)
    batch = next(iter(ds))
    assert info.records == 2 and info.image_records == 1 and info.images and not info.audio
    assert seen == [("hi", f"{f}:1"), (str(tmp_path / "cat.png"), f"{f}:2")]
    np.testing.assert_array_equal(batch["inputs"][1, :9], np.arange(10, 19))
    np.testing.assert_array_equal(batch["loss_mask"][1, :9], [0, 0, 0, 0, 1, 1, 1, 1, 1])


# --- the pipeline ---------------------------------------------------------------------------------


def _check_batch(b, seq_len, tok):
    assert {k: v.shape for k, v in b.items()} == {
        k: (4, seq_len) for k in D.FEATURES + ("segment_ids", "positions")
    }
    for row in range(4):
        seg, pos, inp, tgt = (b[k][row] for k in ("segment_ids", "positions", "inputs", "targets"))
        starts = np.nonzero(np.diff(np.concatenate([[0], seg])))[0]
        assert np.all(pos[starts] == 0)
        for s in np.unique(seg[seg > 0]):
            idx = np.nonzero(seg == s)[0]
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            # targets are the next inputs inside a segment; each segment starts with [gMASK]
            np.testing.assert_array_equal(tgt[idx[:-1]], inp[idx[1:]])
            assert inp[idx[0]] == tok.special_ids.gmask
        assert np.all(b["loss_mask"][row][seg == 0] == 0)
    # the loss mask covers answers: its targets decode to assistant text and stop tokens
    masked = b["targets"][b["loss_mask"] > 0]
    assert set(masked.tolist()) & {tok.special_ids.endoftext}
    assert not set(masked.tolist()) & {
        tok.special_ids.user,
        tok.special_ids.gmask,
        tok.special_ids.assistant,
    }


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_batches_and_iterator_state_resume(tok, mode):
    recipe = DataRecipe(
        seq_len=48, batch_size=4, mode=mode, packing_bins=4, prefetch=2, synthetic_size=500
    )
    ds, _ = D.make_dataset(recipe, tok)
    it = iter(ds)
    for _ in range(3):
        b = next(it)
        _check_batch(b, 48, tok)
    if mode == "pad":
        assert np.all(np.unique(b["segment_ids"]) == [0, 1])
    else:
        assert b["segment_ids"].max() > 1  # several examples per row
    state = it.get_state()
    json.dumps(state)  # saved with the checkpoint as JSON
    want = [next(it) for _ in range(3)]
    it2 = iter(D.make_dataset(recipe, tok)[0])
    it2.set_state(state)
    got = [next(it2) for _ in range(3)]
    for w, g in zip(want, got):
        for k in w:
            np.testing.assert_array_equal(w[k], g[k])
    it.close()
    it2.close()


def test_text_source_trains_on_every_token(tmp_path, tok):
    f = _write(tmp_path / "t.jsonl", [{"text": "hello world"}, {"text": "abc"}])
    recipe = DataRecipe(
        source="text",
        paths=(str(f),),
        seq_len=32,
        batch_size=2,
        mode="pad",
        shuffle=False,
        prefetch=0,
    )
    b = next(iter(D.make_dataset(recipe, tok)[0]))
    n = len(tok.encode("hello world"))  # + eos, minus the shift
    np.testing.assert_array_equal(b["loss_mask"][0], (np.arange(32) < n).astype(np.int32))
    assert b["targets"][0, n - 1] == tok.eos_token_id
