"""`python -m train vision`: pretrain the phone agent's vision tower alone on the simulated
phone's screens (autoglm_jax.training.tower on autoglm_jax.agent.screen_labels)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from autoglm_jax.agent.screen_labels import SCREEN_CLASSES, labelled_screens
from autoglm_jax.checkpoint import save
from autoglm_jax.config import ConfigError
from autoglm_jax.training.loop import initial_model, recipe_tokenizer
from autoglm_jax.training.metrics import MetricsWriter
from autoglm_jax.training.recipe import TrainRecipe
from autoglm_jax.training.tower import pretrain_tower

TRAIN_TASK_SEED = 300_000  # train-split tasks from here on; `agent-data` recipes start at 0-80k


def run_vision(
    recipe: TrainRecipe,
    *,
    screens: int,
    heldout_screens: int,
    eval_every: int,
    position_weight: float = 0.0,
) -> Path:
    """Train, log, and write <run_dir>/model: the trained tower with the rest of the recipe's
    initial model (model.init_from, else the preset freshly initialised)."""
    model = initial_model(recipe)
    model = dataclasses.replace(model, tokenizer=recipe_tokenizer(recipe, model))
    if "visual" not in model.params:
        raise ConfigError(f"model_type {model.config.model_type!r} has no vision tower to train")
    merge = model.config.vision.spatial_merge_size
    seeds = range(TRAIN_TASK_SEED, TRAIN_TASK_SEED + screens)
    train = labelled_screens("train", seeds, merge, seed=recipe.data.seed)
    heldout = labelled_screens("heldout", range(heldout_screens), merge, seed=1)
    labelled = sum(int((x.labels > 0).sum()) for x in train) / sum(x.labels.size for x in train)
    print(
        f"{len(train)} train screens, {len(heldout)} held-out; {labelled:.3f} of the train "
        f"tokens lie on an element ({len(SCREEN_CLASSES)} classes)",
        file=sys.stderr,
        flush=True,
    )
    writer = MetricsWriter(recipe.run_dir)

    def log(record: dict[str, float]) -> None:
        writer.write(int(record["step"]), {k: v for k, v in record.items() if k != "step"})
        place = record.get("accuracy_position")
        print(
            f"step {record['step']}: loss {record['loss']:.3f}; held-out token accuracy "
            f"{record['accuracy_labelled']:.3f} on elements, {record['accuracy']:.3f} all"
            + ("" if place is None else f", row and column {place:.3f}")
            + f" ({record['seconds']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    try:
        result = pretrain_tower(
            model,
            train,
            heldout,
            num_classes=len(SCREEN_CLASSES),
            optim=recipe.optim,
            steps=recipe.steps,
            batch_size=recipe.data.batch_size,
            seed=recipe.data.seed,
            eval_every=eval_every,
            position_weight=position_weight,
            log=log,
        )
    finally:
        writer.close()
    out = Path(recipe.run_dir) / "model"
    save(result.model, out)
    return out
