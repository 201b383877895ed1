"""The engine's reference: greedy decoding with the dense, no-cache forward pass.

Slow (the whole sequence is recomputed per token) and obviously correct; tests compare the
engine against it token for token.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def dense_greedy(
    model: Any,
    prompt: Sequence[int],
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    pad_to: int = 64,
) -> list[int]:
    """Greedy tokens after `prompt`, recomputing the full causal forward for every token.
    Inputs are right-padded to a multiple of `pad_to` to bound compilations (causal attention
    makes the padding invisible to earlier positions)."""
    fwd = _forward(model.module, model.config.text.vocab_size)
    return _greedy(
        prompt,
        max_new_tokens,
        stop_ids,
        pad_to,
        lambda x, ids: fwd(model.params, jnp.asarray(x), jnp.int32(len(ids) - 1)),
    )


def _greedy(
    prompt: Sequence[int],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_to: int,
    last_logits: Any,
) -> list[int]:
    """The greedy loop: `last_logits(x, ids)` gives the logits after `ids`, with x i32[1, L]
    those ids right-padded to a multiple of `pad_to`."""
    ids = list(prompt)
    out: list[int] = []
    for _ in range(max_new_tokens):
        n = len(ids)
        x = np.zeros((1, -(-n // pad_to) * pad_to), np.int32)
        x[0, :n] = ids
        token = int(np.asarray(last_logits(x, ids)).argmax())
        out.append(token)
        ids.append(token)
        if token in stop_ids:
            break
    return out


_CACHE: dict[int, Any] = {}


def _forward(module: Any, vocab: int) -> Any:
    key = id(module)
    if key not in _CACHE:

        @jax.jit
        def f(params: Any, x: jax.Array, last: jax.Array) -> jax.Array:
            logits = module.apply({"params": params}, x)
            return logits[0, last, :vocab]

        _CACHE[key] = f
    return _CACHE[key]


def dense_greedy_multimodal(
    model: Any,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    input_features: Any = None,
    pad_to: int = 64,
    audio_frames: Any = None,
) -> list[int]:
    """Greedy decoding of a glm4v / autoglm model with its images and audio (audio_frames:
    the real mel frames per window, as `prepare` gives them), recomputing the full forward
    (vision tower, audio encoder, M-RoPE positions) for every token. Inputs are
    right-padded to a multiple of `pad_to` (invisible to earlier positions under causal
    attention) so the jitted forward compiles once per length bucket."""
    from autoglm_jax.engine.multimodal import mrope_positions

    config = model.config
    grid = None if image_grid_thw is None else tuple(map(tuple, np.asarray(image_grid_thw)))
    fwd = _mm_forward(model.module, config.text.vocab_size)
    media = [
        None if a is None else jnp.asarray(a)  # on the device once, not per token
        for a in (pixel_values, input_features, audio_frames)
    ]

    def last_logits(x: np.ndarray, ids: list[int]) -> Any:
        n = len(ids)
        positions = np.zeros((3, 1, x.shape[1]), np.int32)
        positions[:, 0, :n] = mrope_positions(config, ids, image_grid_thw)[0]
        return fwd(
            model.params, jnp.asarray(x), jnp.asarray(positions), *media, jnp.int32(n - 1), grid
        )

    return _greedy(prompt_ids, max_new_tokens, (), pad_to, last_logits)


def _mm_forward(module: Any, vocab: int) -> Any:
    key = ("mm", id(module))
    if key not in _CACHE:

        def f(
            params: Any,
            x: jax.Array,
            positions: jax.Array,
            pixel_values: Any,
            input_features: Any,
            audio_frames: Any,
            last: jax.Array,
            grid: Any,
        ) -> jax.Array:
            kwargs: dict[str, Any] = {}
            if pixel_values is not None:
                kwargs.update(pixel_values=pixel_values, image_grid_thw=grid)
            if input_features is not None:
                kwargs.update(input_features=input_features, audio_frames=audio_frames)
            logits = module.apply({"params": params}, x, positions, **kwargs)
            return logits[0, last, :vocab]

        _CACHE[key] = jax.jit(f, static_argnames=("grid",))
    return _CACHE[key]
