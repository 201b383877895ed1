"""How Hugging Face tensors map onto our parameter trees.

Each architecture provides `hf_tensor_maps(config) -> list[TensorMap]`: one entry per HF tensor,
naming the Flax param path and the layout change both ways. Loading, export, sharding-aware
placement and error reporting are generic over these lists (see `hf.py`).

Layouts: PyTorch Linear weights are [out, in]; our kernels are [*in_axes, *out_axes] (for
example q_proj [N*H, D] becomes [D, N, H]).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
ParamPath = tuple[str, ...]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor <-> one leaf of the Flax params tree, or one slice of a leaf.

    With `part=(axis, index)` the tensor is `leaf.take(index, axis)` (to_flax returns that
    slice): several HF tensors fused into one param, such as separate gate and up projections
    in a [D, 2, F] kernel. The maps of one leaf must cover every index of that axis.
    """

    hf_key: str
    path: ParamPath
    to_flax: Transform = _identity
    to_hf: Transform = _identity
    part: tuple[int, int] | None = None


def part_shape(shape: tuple[int, ...], part: tuple[int, int] | None) -> tuple[int, ...]:
    """The shape of a map's slice of a leaf of `shape` (the whole shape when part is None)."""
    if part is None:
        return tuple(shape)
    return tuple(shape[: part[0]]) + tuple(shape[part[0] + 1 :])


def join_parts(pieces: dict[int, np.ndarray], axis: int) -> np.ndarray:
    """A leaf from its slices {index: slice} along `axis` (indices 0..n-1)."""
    return np.stack([pieces[i] for i in range(len(pieces))], axis=axis)


def linear_weight(
    hf_key: str, path: ParamPath, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> TensorMap:
    """An nn.Linear weight [out, in] as a kernel [*in_shape, *out_shape]."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return TensorMap(
        hf_key,
        path,
        to_flax=lambda w: np.ascontiguousarray(w.T).reshape(*in_shape, *out_shape),
        to_hf=lambda k: np.ascontiguousarray(k.reshape(n_in, n_out).T),
    )


def reshaped(
    hf_key: str, path: ParamPath, flax_shape: tuple[int, ...], hf_shape: tuple[int, ...]
) -> TensorMap:
    """A tensor whose layout is the same up to a reshape (biases split into heads)."""
    return TensorMap(
        hf_key, path, to_flax=lambda w: w.reshape(flax_shape), to_hf=lambda k: k.reshape(hf_shape)
    )


def transposed(hf_key: str, path: ParamPath, axes: tuple[int, ...]) -> TensorMap:
    """A tensor stored with permuted axes (conv kernels: torch [O, I, k] -> flax [k, I, O])."""
    inverse = tuple(int(i) for i in np.argsort(axes))
    return TensorMap(
        hf_key,
        path,
        to_flax=lambda w: np.ascontiguousarray(w.transpose(axes)),
        to_hf=lambda k: np.ascontiguousarray(k.transpose(inverse)),
    )


def get_path(tree: dict[str, Any], path: ParamPath) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def set_path(tree: dict[str, Any], path: ParamPath, value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def params_from_state_dict(maps: list[TensorMap], state: dict[str, np.ndarray]) -> dict[str, Any]:
    """Convenience for tests: a params tree from an in-memory HF state dict (numpy)."""
    params: dict[str, Any] = {}
    pieces: dict[ParamPath, dict[int, np.ndarray]] = {}
    for m in maps:
        arr = m.to_flax(np.asarray(state[m.hf_key]))
        if m.part is None:
            set_path(params, m.path, arr)
        else:
            pieces.setdefault(m.path, {})[m.part[1]] = arr
    axes = {m.path: m.part[0] for m in maps if m.part is not None}
    for path, got in pieces.items():
        set_path(params, path, join_parts(got, axes[path]))
    return params


def state_dict_from_params(maps: list[TensorMap], params: dict[str, Any]) -> dict[str, np.ndarray]:
    """An HF state dict (numpy) from a params tree."""
    out = {}
    for m in maps:
        leaf = np.asarray(get_path(params, m.path))
        if m.part is not None:
            leaf = np.take(leaf, m.part[1], axis=m.part[0])
        out[m.hf_key] = m.to_hf(leaf)
    return out
