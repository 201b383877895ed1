"""training/tower.py: a vision tower pretrained alone on per-token labels. The token grid by
hand, a tower that learns colours it could not know at init, bad labels refused, and
`python -m train vision` end to end on the simulated phone's screens."""

import json

import jax
import numpy as np
import pytest

from autoglm_jax.config import ConfigError
from autoglm_jax.training.recipe import OptimRecipe
from autoglm_jax.training.tower import (
    LabelledImage,
    pretrain_tower,
    token_centres,
    token_grid,
    token_places,
)
from tests.training import np_init

COLOURS = ((230, 40, 40), (40, 200, 60), (40, 80, 230))


def test_token_grid_and_centres_by_hand():
    # 112 x 196 (w x h) is already a multiple of 28: 4 x 7 merged tokens of 28 x 28 pixels.
    assert token_grid(196, 112, merge_size=2) == (7, 4)
    centres = token_centres(196, 112, merge_size=2)
    assert centres.shape == (28, 2)
    assert centres[0].tolist() == [14, 14] and centres[1].tolist() == [42, 14]
    assert centres[4].tolist() == [14, 42] and centres[27].tolist() == [98, 182]
    # 56 x 56 is below min_pixels (2 frames of 112 x 112 / 2): resized to 84 x 84, 3 x 3
    # tokens; centres are given in the image's own pixels
    assert token_grid(56, 56, merge_size=2) == (3, 3)
    assert token_centres(56, 56, merge_size=2)[4].tolist() == [28, 28]


def test_token_places_by_hand():
    # a 4 x 6-patch image at merge 2 is 2 x 3 tokens, row-major; a 2-frame one repeats its grid
    assert token_places(((1, 4, 6),), merge_size=2).tolist() == [
        [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]
    ]  # fmt: skip
    both = token_places(((1, 2, 2), (2, 4, 2)), merge_size=2)
    assert both.tolist() == [[0, 0], [0, 0], [1, 0], [0, 0], [1, 0]]


def _quadrants(rng, n):
    """112 x 112 images of four single-colour quadrants; each token's class is its quadrant's
    colour + 1 (class 0 unused), row-major over the 4 x 4 token grid."""
    out = []
    for _ in range(n):
        pick = rng.integers(0, len(COLOURS), size=(2, 2))
        image = np.zeros((112, 112, 3), np.uint8)
        labels = np.zeros((4, 4), np.int32)
        for r in range(2):
            for c in range(2):
                image[r * 56 : (r + 1) * 56, c * 56 : (c + 1) * 56] = COLOURS[pick[r, c]]
                labels[r * 2 : (r + 1) * 2, c * 2 : (c + 1) * 2] = pick[r, c] + 1
        out.append(LabelledImage(image, labels.ravel()))
    return out


def test_pretrain_tower_learns_what_lies_under_each_token():
    model = np_init("tiny-vl", seed=0)
    rng = np.random.default_rng(0)
    train, heldout = _quadrants(rng, 64), _quadrants(rng, 16)
    records = []
    optim = OptimRecipe(lr=3e-3, warmup_steps=5, min_lr_ratio=0.1)
    result = pretrain_tower(
        model,
        train,
        heldout,
        num_classes=4,
        optim=optim,
        steps=60,
        batch_size=8,
        eval_every=30,
        log=records.append,
    )
    assert [r["step"] for r in records] == [1, 30, 60]
    assert records[0]["accuracy"] < 0.7  # a zero head says class 0 for every token at first
    assert records[-1]["accuracy"] > 0.95 and records[-1]["accuracy_labelled"] > 0.95
    assert records[-1]["loss"] < records[0]["loss"]
    before, after = model.params, result.model.params
    moved = jax.tree.map(lambda a, b: bool((a != b).any()), before["visual"], after["visual"])
    kept = jax.tree.map(
        lambda a, b: bool((a == b).all()), before["language_model"], after["language_model"]
    )
    assert any(jax.tree.leaves(moved)) and all(jax.tree.leaves(kept))


def test_pretrain_tower_with_position_targets_learns_where_each_token_is():
    # Every token of an image the same colour: the class says nothing about the place, so the
    # row and column heads can only be right if the tower's output carries the position.
    model = np_init("tiny-vl", seed=0)
    rng = np.random.default_rng(1)
    plain = [
        LabelledImage(np.full((112, 112, 3), COLOURS[c], np.uint8), np.full(16, c + 1, np.int32))
        for c in rng.integers(0, len(COLOURS), size=48)
    ]
    records = []
    optim = OptimRecipe(lr=3e-3, warmup_steps=5, min_lr_ratio=0.1)
    kw = dict(num_classes=4, optim=optim, steps=300, batch_size=4, eval_every=150)
    pretrain_tower(model, plain[:32], plain[32:], position_weight=1.0, log=records.append, **kw)
    # zero heads say row 0, column 0: 1 token in 16; the colour is learnt at once, the place
    # slowly (0.16 at step 150, 1.0 at the end here)
    assert records[0]["accuracy_position"] < 0.1
    assert records[-1]["accuracy_position"] > 0.6 and records[-1]["accuracy"] > 0.95
    without = []
    pretrain_tower(model, plain[:32], plain[32:], steps=1, batch_size=8, num_classes=4,
                   optim=optim, log=without.append)  # fmt: skip
    assert "accuracy_position" not in without[0]
    with pytest.raises(ConfigError, match="position_weight must be >= 0"):
        pretrain_tower(model, plain, plain, position_weight=-1.0, **kw)


def test_pretrain_tower_refuses_labels_that_do_not_fit():
    model = np_init("tiny-vl", seed=0)
    good = _quadrants(np.random.default_rng(0), 2)
    short = [LabelledImage(good[0].image, good[0].labels[:10])]
    kw = dict(num_classes=4, optim=OptimRecipe(), steps=1, batch_size=2)
    with pytest.raises(ConfigError, match=r"train image 0: labels have shape \(10,\).*16 tokens"):
        pretrain_tower(model, short, good, **kw)
    wide = [LabelledImage(good[0].image, good[0].labels + 4)]
    with pytest.raises(ConfigError, match="heldout image 0: labels outside 0..3"):
        pretrain_tower(model, good, wide, **kw)
    with pytest.raises(ConfigError, match="no vision tower"):
        pretrain_tower(np_init("tiny"), good, good, **kw)


def test_train_vision_cli_writes_a_model_with_the_trained_tower(tmp_path, capsys):
    import autoglm_jax as ag
    from train.__main__ import main

    run = tmp_path / "run"
    main(
        [
            "vision",
            "--recipe",
            "configs/recipes/phone-agent-vision.toml",
            "--steps",
            "2",
            "--vision.screens",
            "6",
            "--vision.heldout-screens",
            "3",
            "--vision.eval-every",
            "1",
            "--vision.position-weight",
            "1.0",
            "--data.batch-size",
            "3",
            "--run-dir",
            str(run),
        ]
    )
    out = capsys.readouterr()
    assert "6 train screens, 3 held-out" in out.err and "(28 classes)" in out.err
    assert f"--model.init-from {run / 'model'}" in out.out
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["accuracy_position"] <= 1 for r in records)
    assert ", row and column " in out.err
    trained = ag.load(run / "model")
    fresh = ag.init(trained.config, seed=0)  # the recipe's preset and seed
    diff = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        trained.params,
        fresh.params,
    )
    assert max(jax.tree.leaves(diff["visual"])) > 0
    assert max(jax.tree.leaves(diff["language_model"])) == 0
