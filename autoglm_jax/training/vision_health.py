"""Whether a vision tower still sees: the spread of its output over a batch's images.

A VLM trained from scratch can lose its eyes early. Before the decoder uses the image tokens,
what helps it most is the same embedding at every image token (the part of the gradient common
to all of them adds up under Adam; the image-specific parts average out), so the tower learns a
large constant output and the differences between patches and images shrink to nothing. After
that the decoder cannot read the screen however long it trains, and the loss does not show it:
answers that do not need the image still improve. The phone-agent models up to 2026-12-07 were
like this (docs/agent.md, "The vision tower collapsed").

`image_spread` is the mean over channels of the standard deviation across the real image
tokens of the batch, over the mean absolute value. It depends on the images (a freshly
initialised phone-agent tower: about 0.4 on a training batch of 16 screens, 0.99 over 121
held-out screens); collapsed towers gave 2e-5 to 8e-3 (the shipped autoglm-phone-sim 2e-5,
`tools/vision-probe`), and those models pointed no better with the screen than with a blank
one. The training loop logs it with the other metrics on batches with images and warns below
`COLLAPSED`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

COLLAPSED = 1e-2
"""image_spread below this: every image gives the decoder (nearly) the same embeddings (every
collapsed tower we measured was below it, every seeing one above)."""


def tower_output(module: nn.Module, params: Any, pixel_values: Any, grid: Any) -> jax.Array:
    """[T, D]: the vision tower's merged tokens for `pixel_values` (images of `grid`, a tuple
    of (t, h, w) tuples), all images' tokens in order; `params` is the whole model's."""
    return module.apply(
        {"params": params}, pixel_values, grid, method=lambda m, pv, g: m.visual(pv, g)
    )


_tower_jit = jax.jit(tower_output, static_argnums=(0, 3))


def tower_spread(module: nn.Module, params: Any, pixel_values: Any, grid: Any, rows: int) -> float:
    """image_spread of the tower's output on `pixel_values` (images of `grid`, a tuple of
    (t, h, w)), over its first `rows` output rows (the real images' tokens)."""
    grid = tuple(tuple(int(v) for v in row) for row in grid)
    out = _tower_jit(module, params, jnp.asarray(pixel_values), grid)
    out = np.asarray(out[:rows], np.float32)
    scale = float(np.abs(out).mean())
    return float(out.std(axis=0).mean() / scale) if scale > 0 else 0.0


def image_spread(module: nn.Module, params: Any, batch: dict[str, Any]) -> float | None:
    """The relative spread of the vision tower's output over `batch`'s real images (the
    padding images at the end of pixel_values are left out); None for a batch without images.
    `batch` is a training batch as `make_dataset` yields it (host arrays)."""
    if "pixel_values" not in batch or not hasattr(module, "config"):
        return None
    real_tokens = int(np.sum(np.asarray(batch["inputs"]) == module.config.image_token_id))
    if real_tokens < 2:
        return None
    grid = np.asarray(batch["image_grid_thw"])
    return tower_spread(module, params, batch["pixel_values"], grid, real_tokens)
