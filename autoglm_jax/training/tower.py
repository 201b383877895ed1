"""Pretraining a vision tower alone: which class lies under each of an image's vision tokens.

Trained jointly with the decoder from scratch, a small VLM's tower can collapse to one output
for every image before the decoder learns to use it (training/vision_health.py); the phone
agent's did, every time (docs/agent.md, "The vision tower collapsed"). Here the tower learns
on its own with direct supervision: a linear head on its RMS-normalised output classifies
every merged vision token (softmax cross-entropy, the recipe's AdamW and schedule). The head
is thrown away; the model keeps the trained tower and whatever decoder it had, for a decoder
run on top (`train pretrain` with `optim.trainable = ["language_model/*"]` keeps the tower).

    images = [LabelledImage(rgb, labels), ...]   # labels: i32[rows * cols], row-major
    result = pretrain_tower(model, images, heldout, num_classes=29, optim=..., steps=2500)

A token's label is the class at its centre (`token_centres` gives them in the image's own
pixels); class 0 is "nothing there", and accuracy is reported over the other tokens and over
all of them.

With `position_weight` > 0, two more linear heads read each token's own row and column in its
image's token grid (the mean of their two cross-entropies, at that weight against the class
loss). Classes alone do not
keep where a token is in its output: a linear probe (tools/vision-probe) reads a token's row
off the shipped phone agent's tower 16% of the time, of 7 rows, and a decoder that cannot
read where a token is cannot tap it unless the place is always the same (docs/agent.md).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from autoglm_jax.checkpoint.api import Model
from autoglm_jax.config import ConfigError
from autoglm_jax.processing.image import ImageProcessorConfig, process_images, resized_size
from autoglm_jax.training.recipe import OptimRecipe
from autoglm_jax.training.step import make_optimizer
from autoglm_jax.training.vision_health import tower_output


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    image: np.ndarray  # u8[H, W, 3]
    labels: np.ndarray  # i32[rows * cols] class of each merged vision token, row-major


@dataclasses.dataclass(frozen=True)
class TowerResult:
    model: Model  # the input model with the trained tower
    history: list[dict[str, float]]  # per evaluation: step, loss, accuracy_labelled, accuracy
    # (and accuracy_position: row and column both right, with position_weight > 0)


def token_grid(height: int, width: int, merge_size: int) -> tuple[int, int]:
    """(rows, cols) of merged vision tokens for an image of height x width pixels."""
    config = ImageProcessorConfig(merge_size=merge_size)
    rh, rw = resized_size(height, width, config)
    side = config.patch_size * merge_size
    return rh // side, rw // side


def token_centres(height: int, width: int, merge_size: int) -> np.ndarray:
    """f32[rows * cols, 2] (x, y) centre of each merged vision token in the image's own pixels,
    in the tower's output order (row-major over the merged grid)."""
    rows, cols = token_grid(height, width, merge_size)
    y, x = np.meshgrid(
        (np.arange(rows) + 0.5) * height / rows,
        (np.arange(cols) + 0.5) * width / cols,
        indexing="ij",
    )
    return np.stack([x.ravel(), y.ravel()], axis=-1).astype(np.float32)


def token_places(grids: Sequence[tuple[int, int, int]], merge_size: int) -> np.ndarray:
    """i32[T, 2] (row, column) of every merged vision token of images of `grids` ((t, h, w)
    in patches), in the tower's output order (image by image, frame by frame, row-major)."""
    places = []
    for t, h, w in grids:
        rows, cols = h // merge_size, w // merge_size
        grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
        places.extend([grid.reshape(-1, 2)] * t)
    return np.concatenate(places).astype(np.int32)


def _check(images: Sequence[LabelledImage], merge_size: int, num_classes: int, what: str) -> None:
    if not images:
        raise ConfigError(f"{what}: no images")
    for i, item in enumerate(images):
        rows, cols = token_grid(*item.image.shape[:2], merge_size)
        if item.labels.shape != (rows * cols,):
            raise ConfigError(
                f"{what} image {i}: labels have shape {item.labels.shape}, the tower gives "
                f"{rows} x {cols} = {rows * cols} tokens for a {item.image.shape[:2]} image"
            )
        if item.labels.min() < 0 or item.labels.max() >= num_classes:
            raise ConfigError(f"{what} image {i}: labels outside 0..{num_classes - 1}")


def pretrain_tower(
    model: Model,
    train: Sequence[LabelledImage],
    heldout: Sequence[LabelledImage],
    *,
    num_classes: int,
    optim: OptimRecipe,
    steps: int,
    batch_size: int,
    seed: int = 0,
    eval_every: int = 100,
    position_weight: float = 0.0,
    log: Callable[[dict[str, float]], None] = lambda record: None,
) -> TowerResult:
    """Train `model`'s vision tower (params["visual"]) to classify each vision token of
    `train`'s images (and, with `position_weight` > 0, to tell its row and column); evaluate
    on `heldout` every `eval_every` steps and at the end. Batches of `batch_size` images drawn
    at random (numpy, `seed`); images of one size compile once."""
    if "visual" not in model.params:
        raise ConfigError(f"model_type {model.config.model_type!r} has no vision tower")
    merge = model.config.vision.spatial_merge_size
    _check(train, merge, num_classes, "train")
    _check(heldout, merge, num_classes, "heldout")
    if position_weight < 0:
        raise ConfigError(f"position_weight must be >= 0, got {position_weight}")
    module, frozen = model.module, {k: v for k, v in model.params.items() if k != "visual"}
    width = model.config.vision.out_hidden_size
    params = {"visual": model.params["visual"], "head": {"kernel": jnp.zeros((width, num_classes))}}
    if position_weight:
        grids = [token_grid(*item.image.shape[:2], merge) for item in (*train, *heldout)]
        rows, cols = (max(g[i] for g in grids) for i in (0, 1))
        params["row_head"] = {"kernel": jnp.zeros((width, rows))}
        params["column_head"] = {"kernel": jnp.zeros((width, cols))}

    def loss_and_hits(
        p: Any, pixel_values: jax.Array, labels: jax.Array, places: jax.Array, grid: tuple
    ) -> Any:
        """(loss, (class right [T], row and column right [T]))."""
        out = tower_output(module, {**frozen, "visual": p["visual"]}, pixel_values, grid)
        out = out / (jnp.sqrt(jnp.mean(out**2, -1, keepdims=True)) + 1e-6)
        logits = jnp.einsum("TD,DV->TV", out, p["head"]["kernel"])  # the classes as vocab
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        placed = jnp.ones(labels.shape, bool)
        for i, head in enumerate(("row_head", "column_head") if position_weight else ()):
            place_logits = jnp.einsum("TD,DV->TV", out, p[head]["kernel"])
            ce = optax.softmax_cross_entropy_with_integer_labels(place_logits, places[:, i])
            loss = loss + position_weight / 2 * ce.mean()
            placed = placed & (jnp.argmax(place_logits, -1) == places[:, i])
        return loss, (jnp.argmax(logits, -1) == labels, placed)

    tx, _ = make_optimizer(optim, steps, params)

    @functools.partial(jax.jit, static_argnums=(5,))
    def update(p: Any, opt_state: Any, pixel_values: Any, labels: Any, places: Any, grid: tuple):
        grad_fn = jax.value_and_grad(loss_and_hits, has_aux=True)
        (loss, _), grads = grad_fn(p, pixel_values, labels, places, grid)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    hits_fn = jax.jit(lambda p, *b: loss_and_hits(p, *b)[1], static_argnums=4)

    def batch(items: Sequence[LabelledImage]) -> tuple[Any, Any, Any, tuple]:
        images = process_images([item.image for item in items])
        grid = tuple(tuple(int(v) for v in row) for row in images.image_grid_thw)
        labels = np.concatenate([item.labels for item in items]).astype(np.int32)
        places = token_places(grid, merge)
        return jnp.asarray(images.pixel_values), jnp.asarray(labels), jnp.asarray(places), grid

    # The held-out batches, preprocessed once for every evaluation.
    heldout_batches = [
        batch(heldout[start : start + batch_size]) for start in range(0, len(heldout), batch_size)
    ]
    lab = np.concatenate([np.asarray(b[1]) for b in heldout_batches])

    def evaluate(p: Any) -> dict[str, float]:
        hits = [jax.device_get(hits_fn(p, *b)) for b in heldout_batches]
        hit = np.concatenate([h[0] for h in hits])
        labelled = float(hit[lab > 0].mean()) if (lab > 0).any() else float("nan")
        scores = {"accuracy_labelled": labelled, "accuracy": float(hit.mean())}
        if position_weight:
            scores["accuracy_position"] = float(np.concatenate([h[1] for h in hits]).mean())
        return scores

    rng, opt_state, history, start = np.random.default_rng(seed), tx.init(params), [], time.time()
    for step in range(1, steps + 1):
        chosen = rng.choice(len(train), size=min(batch_size, len(train)), replace=False)
        pixel_values, labels, places, grid = batch([train[i] for i in chosen])
        params, opt_state, loss = update(params, opt_state, pixel_values, labels, places, grid)
        if step % eval_every == 0 or step == steps or step == 1:
            record = {
                "step": step,
                "loss": float(loss),
                **evaluate(params),
                "seconds": time.time() - start,
            }
            history.append(record)
            log(record)
    trained = dataclasses.replace(model, params={**model.params, "visual": params["visual"]})
    return TowerResult(trained, history)
