"""The engine's reference: greedy decoding with the dense, no-cache forward pass.

Slow (the whole sequence is recomputed per token) and obviously correct; tests compare the
engine against it token for token.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def dense_greedy(model: Any, prompt: Sequence[int], max_new_tokens: int,
                 stop_ids: Sequence[int] = (), pad_to: int = 64) -> list[int]:
    """Greedy tokens after `prompt`, recomputing the full causal forward for every token.
    Inputs are right-padded to a multiple of `pad_to` to bound compilations (causal attention
    makes the padding invisible to earlier positions)."""
    fwd = _forward(model.module)
    ids = list(prompt)
    out: list[int] = []
    for _ in range(max_new_tokens):
        n = len(ids)
        length = -(-n // pad_to) * pad_to
        x = np.zeros((1, length), np.int32)
        x[0, :n] = ids
        logits = fwd(model.params, jnp.asarray(x), jnp.int32(n - 1))
        token = int(np.asarray(logits).argmax())
        out.append(token)
        ids.append(token)
        if token in stop_ids:
            break
    return out


_CACHE: dict[int, Any] = {}


def _forward(module: Any) -> Any:
    key = id(module)
    if key not in _CACHE:
        @jax.jit
        def f(params: Any, x: jax.Array, last: jax.Array) -> jax.Array:
            logits = module.apply({"params": params}, x)
            return logits[0, last, :module.config.vocab_size]
        _CACHE[key] = f
    return _CACHE[key]
