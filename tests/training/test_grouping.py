"""Length-grouped batches (data.length_groups): the batch plan, the cut batch length, and the
pipeline's batches against the same records padded to seq_len."""

import json

import numpy as np
import pytest

from autoglm_jax.config import ConfigError
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from autoglm_jax.training import data as D
from autoglm_jax.training.grouping import LengthGroupedBatches, batch_length
from autoglm_jax.training.recipe import DataRecipe, TrainRecipe


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


def test_batch_length_rounds_up_and_caps():
    assert batch_length([3, 64, 10], seq_len=336, multiple=64) == 64
    assert batch_length([3, 65], seq_len=336, multiple=64) == 128
    assert batch_length([300], seq_len=336, multiple=64) == 320
    assert batch_length([330], seq_len=336, multiple=64) == 336
    assert batch_length([1], seq_len=336, multiple=64) == 64


def test_each_epoch_draws_every_record_once_in_batches_of_similar_size():
    rng = np.random.default_rng(0)
    sizes = rng.integers(10, 1000, size=203)
    grouped = LengthGroupedBatches(sizes, batch_size=4, window=5, seed=1)
    per_epoch = 203 // 4  # 50 batches; 3 records wait for another epoch
    epochs = [np.stack([grouped[e * per_epoch + k] for k in range(per_epoch)]) for e in range(2)]
    for plan in epochs:
        assert len(np.unique(plan)) == plan.size == 200
        # inside a window of 5 batches, the batches hold disjoint ranges of sizes
        for w in range(0, per_epoch, 5):
            ranges = sorted((sizes[b].min(), sizes[b].max()) for b in plan[w : w + 5])
            assert all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    again = LengthGroupedBatches(sizes, batch_size=4, window=5, seed=1)
    np.testing.assert_array_equal(again[57], epochs[1][7])  # a pure function of the index
    other = LengthGroupedBatches(sizes, batch_size=4, window=5, seed=2)
    assert not np.array_equal(other[0], epochs[0][0])
    # grouping cuts padding: the mean batch maximum is far below random batches'
    grouped_max = np.mean([sizes[b].max() for b in epochs[0]])
    random_max = np.mean([sizes[b].max() for b in rng.permutation(200).reshape(50, 4)])
    assert grouped_max < 0.8 * random_max
    with pytest.raises(ValueError, match="3 records cannot fill one batch of 4"):
        LengthGroupedBatches(sizes[:3], batch_size=4, window=5, seed=1)


def _chat_file(tmp_path, n=40):
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        q = "x" * int(rng.integers(1, 90))
        a = "y" * int(rng.integers(1, 20))
        msgs = [{"role": "user", "content": f"{i} {q}"}, {"role": "assistant", "content": a}]
        lines.append(json.dumps({"messages": msgs}))
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe(path, **kw):
    settings = dict(
        source="chat",
        paths=(str(path),),
        seq_len=128,
        batch_size=4,
        mode="pad",
        length_groups=3,
        pad_multiple=16,
        prefetch=0,
        seed=5,
    )
    return DataRecipe(**{**settings, **kw})


def test_grouped_batches_are_the_records_padded_to_their_batch_length(tmp_path, tok):
    path = _chat_file(tmp_path)
    recipe = _recipe(path)
    full = D.make_dataset(_recipe(path, length_groups=0, shuffle=False), tok)[0]
    by_record = {}  # the first user turn's number -> that record padded to seq_len
    for _, b in zip(range(10), iter(full)):
        for row in range(4):
            digits = tok.decode(b["inputs"][row][b["segment_ids"][row] > 0].tolist())
            number = int(digits.split("<|user|>")[1].split()[0])
            by_record[number] = {k: v[row] for k, v in b.items()}
    it = iter(D.make_dataset(recipe, tok)[0])
    lengths = set()
    for _ in range(10):  # one epoch
        b = next(it)
        t = b["inputs"].shape[1]
        lengths.add(t)
        assert t % 16 == 0 and t <= 128
        longest = int(b["segment_ids"].sum(axis=1).max())
        assert t - 16 < longest <= t  # cut to the longest example, rounded up
        for row in range(4):
            seg = b["segment_ids"][row]
            text = tok.decode(b["inputs"][row][seg > 0].tolist())
            want = by_record[int(text.split("<|user|>")[1].split()[0])]
            for k in b:
                np.testing.assert_array_equal(b[k][row], want[k][..., :t])
                assert not want[k][..., t:].any()  # only padding was cut
    assert len(lengths) > 1
    # the iterator state resumes exactly
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(3)]
    it2 = iter(D.make_dataset(recipe, tok)[0])
    it2.set_state(state)
    for w, g in zip(want, (next(it2) for _ in range(3))):
        for k in w:
            np.testing.assert_array_equal(w[k], g[k])


def test_grouping_needs_a_padded_jsonl_source(tmp_path, tok):
    path = _chat_file(tmp_path, n=8)
    with pytest.raises(ConfigError, match="data.length_groups.*JSONL source"):
        TrainRecipe(data=DataRecipe(mode="pad", length_groups=4)).validate()
    with pytest.raises(ConfigError, match="data.length_groups"):
        TrainRecipe(data=_recipe(path, mode="pack")).validate()
    with pytest.raises(ConfigError, match="data.shuffle"):
        TrainRecipe(data=_recipe(path, shuffle=False)).validate()
    with pytest.raises(ConfigError, match="data.pad_multiple"):
        TrainRecipe(data=_recipe(path, pad_multiple=0)).validate()
    with pytest.raises(D.DataError, match="length_groups.*one host"):
        D.make_dataset(_recipe(path), tok, process_count=2)
