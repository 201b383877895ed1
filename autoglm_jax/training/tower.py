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
    log: Callable[[dict[str, float]], None] = lambda record: None,
) -> TowerResult:
    """Train `model`'s vision tower (params["visual"]) to classify each vision token of
    `train`'s images; evaluate on `heldout` every `eval_every` steps and at the end. Batches of
    `batch_size` images drawn at random (numpy, `seed`); images of one size compile once."""
    if "visual" not in model.params:
        raise ConfigError(f"model_type {model.config.model_type!r} has no vision tower")
    merge = model.config.vision.spatial_merge_size
    _check(train, merge, num_classes, "train")
    _check(heldout, merge, num_classes, "heldout")
    module, frozen = model.module, {k: v for k, v in model.params.items() if k != "visual"}
    width = model.config.vision.out_hidden_size
    params = {"visual": model.params["visual"], "head": {"kernel": jnp.zeros((width, num_classes))}}

    def loss_and_hits(p: Any, pixel_values: jax.Array, labels: jax.Array, grid: tuple) -> Any:
        out = tower_output(module, {**frozen, "visual": p["visual"]}, pixel_values, grid)
        out = out / (jnp.sqrt(jnp.mean(out**2, -1, keepdims=True)) + 1e-6)
        logits = jnp.einsum("TD,DV->TV", out, p["head"]["kernel"])  # the classes as vocab
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, jnp.argmax(logits, -1) == labels

    tx, _ = make_optimizer(optim, steps, params)

    @functools.partial(jax.jit, static_argnums=(4,))
    def update(p: Any, opt_state: Any, pixel_values: Any, labels: Any, grid: tuple) -> Any:
        grad_fn = jax.value_and_grad(loss_and_hits, has_aux=True)
        (loss, _), grads = grad_fn(p, pixel_values, labels, grid)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    hits_fn = jax.jit(lambda p, pv, lab, grid: loss_and_hits(p, pv, lab, grid)[1], static_argnums=3)

    def batch(items: Sequence[LabelledImage]) -> tuple[Any, Any, tuple]:
        images = process_images([item.image for item in items])
        grid = tuple(tuple(int(v) for v in row) for row in images.image_grid_thw)
        labels = np.concatenate([item.labels for item in items]).astype(np.int32)
        return jnp.asarray(images.pixel_values), jnp.asarray(labels), grid

    # The held-out batches, preprocessed once for every evaluation.
    heldout_batches = [
        batch(heldout[start : start + batch_size]) for start in range(0, len(heldout), batch_size)
    ]
    lab = np.concatenate([np.asarray(labels) for _, labels, _ in heldout_batches])

    def evaluate(p: Any) -> tuple[float, float]:
        hit = np.concatenate([np.asarray(hits_fn(p, *b)) for b in heldout_batches])
        labelled = float(hit[lab > 0].mean()) if (lab > 0).any() else float("nan")
        return labelled, float(hit.mean())

    rng, opt_state, history, start = np.random.default_rng(seed), tx.init(params), [], time.time()
    for step in range(1, steps + 1):
        chosen = rng.choice(len(train), size=min(batch_size, len(train)), replace=False)
        pixel_values, labels, grid = batch([train[i] for i in chosen])
        params, opt_state, loss = update(params, opt_state, pixel_values, labels, grid)
        if step % eval_every == 0 or step == steps or step == 1:
            labelled, every = evaluate(params)
            record = {
                "step": step,
                "loss": float(loss),
                "accuracy_labelled": labelled,
                "accuracy": every,
                "seconds": time.time() - start,
            }
            history.append(record)
            log(record)
    trained = dataclasses.replace(model, params={**model.params, "visual": params["visual"]})
    return TowerResult(trained, history)
