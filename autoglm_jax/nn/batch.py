"""The contract between a training batch and the model: the batch's keys, and the keyword
arguments of the model's forward that a batch gives (training, pruning calibration, evaluation
all call the model this way).

    arrays, grid = split_static(batch)
    logits = module.apply({"params": p}, arrays["inputs"], **forward_kwargs(module, arrays, grid))
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoglm_jax.nn.model import AutoGLM, Glm4vModel
from autoglm_jax.nn.vision import grid_tuple

Array = jax.Array

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
MEDIA_KEYS = ("pixel_values", "input_features", "audio_rows", "audio_frames")
STATIC_KEYS = ("image_grid_thw",)


def split_static(batch: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(the batch's arrays, the image grid as a hashable tuple or None)."""
    arrays = {k: v for k, v in batch.items() if k not in STATIC_KEYS}
    grid = batch.get("image_grid_thw")
    return arrays, (grid_tuple(grid) if grid is not None else None)


def forward_kwargs(module: nn.Module, batch: dict[str, Array], grid: Any = None) -> dict[str, Any]:
    """The keyword arguments of `module.apply(..., batch["inputs"], **kw)` for a training
    batch: positions (M-RoPE [B, 3, T] turned [3, B, T]), segment ids, and the batch's media
    (pixel_values with the static image `grid` tuple, audio features with their rows)."""
    positions = batch["positions"]
    if positions.ndim == 3:  # M-RoPE: [B, 3, T] in the batch, [3, B, T] for the model
        positions = jnp.swapaxes(positions, 0, 1)
    kw: dict[str, Any] = dict(positions=positions, segment_ids=batch.get("segment_ids"))
    if any(k in batch for k in MEDIA_KEYS):
        if not isinstance(module, Glm4vModel):
            raise ValueError(
                f"a {type(module).__name__} takes text only; image/audio batches "
                "need a glm4v or autoglm model"
            )
        if "pixel_values" in batch:
            if grid is None:
                raise ValueError("pixel_values need the batch's image_grid_thw")
            kw.update(pixel_values=batch["pixel_values"], image_grid_thw=grid)
        if "input_features" in batch:
            if not isinstance(module, AutoGLM):
                raise ValueError(
                    f"a {type(module).__name__} has no audio encoder (the batch "
                    "holds input_features)"
                )
            b = batch["inputs"].shape[0]
            kw.update(
                input_features=batch["input_features"],
                audio_rows=batch["audio_rows"],
                max_audio_per_row=batch["input_features"].shape[0] // b,
                audio_frames=batch.get("audio_frames"),
            )
    return kw
