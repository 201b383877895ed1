"""A step's host-built metadata as one array: one host-to-device copy per step, not one per
field (token ids, positions, slot mapping, page tables, sampling parameters: about 25 small
arrays).

    words, on_device, layout = pack(step_inputs)        # host: int32[N], device leaves, static
    step_inputs = unpack(words, on_device, layout)      # inside the jitted step

Every numpy leaf of 4-byte or bool dtype is stored as int32 words (floats and uint32 by their
bits, bools as 0/1) at a static offset; leaves already on the device (image rows) pass through.
`layout` is hashable: it is a static argument of the step program, fixed by the step's shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each leaf of a packed pytree lives: (offset, shape, dtype) in the words, or
    (index,) among the leaves kept on the device."""

    treedef: Any
    leaves: tuple[tuple[Any, ...], ...]


def _words(leaf: np.ndarray) -> np.ndarray:
    if leaf.dtype == np.bool_:
        return leaf.astype(np.int32).ravel()
    if leaf.dtype.itemsize != 4:
        raise TypeError(f"cannot pack a {leaf.dtype} leaf into int32 words")
    return np.ascontiguousarray(leaf).view(np.int32).ravel()


def pack(tree: Any) -> tuple[np.ndarray, tuple[jax.Array, ...], Layout]:
    """The host leaves of `tree` as one int32 array, its device leaves, and the layout."""
    leaves, treedef = jax.tree.flatten(tree)
    pieces: list[np.ndarray] = []
    on_device: list[jax.Array] = []
    specs: list[tuple[Any, ...]] = []
    offset = 0
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            specs.append((len(on_device),))
            on_device.append(leaf)
            continue
        leaf = np.asarray(leaf)
        words = _words(leaf)
        specs.append((offset, leaf.shape, leaf.dtype.str))
        pieces.append(words)
        offset += words.size
    words = np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)
    return words, tuple(on_device), Layout(treedef, tuple(specs))


def unpack(words: jax.Array, on_device: Sequence[jax.Array], layout: Layout) -> Any:
    """`pack`'s inverse, traced inside the jitted step (static slices of `words`)."""
    leaves = []
    for spec in layout.leaves:
        if len(spec) == 1:
            leaves.append(on_device[spec[0]])
            continue
        offset, shape, dtype = spec
        dtype = np.dtype(dtype)
        piece = words[offset : offset + math.prod(shape)].reshape(shape)
        if dtype == np.bool_:
            leaves.append(piece != 0)
        elif dtype == np.int32:
            leaves.append(piece)
        else:
            leaves.append(jax.lax.bitcast_convert_type(piece, jnp.dtype(dtype)))
    return jax.tree.unflatten(layout.treedef, leaves)
