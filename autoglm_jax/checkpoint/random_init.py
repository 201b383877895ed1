"""Random params whose init program does not grow with depth.

`module.init` under jit draws every param with its own random-number ops, so a 40-layer 9B
model's init program holds ~260 copies of the generator and XLA spends minutes compiling it
(131 s on an H200; 22 s on 2 CPU cores for the same depth at small widths). Layers repeat,
so their params repeat the same initializer at the same shape: `grouped_init` records each
param's initializer once (an abstract `module.init`), groups the params whose initializers
are the same function of the same arguments, and draws each group with one vmapped call over
per-param keys. The program then holds one generator per distinct (initializer, shape), the
same at any depth.

Every param gets its own key (`fold_in(key, index)`, index in creation order), so layers
differ and a seed gives the same params on every run; the values are not those `module.init`
would draw for that seed (same distributions, other keys). Initializers that close over
arrays (a compressed config quantizes a freshly drawn kernel) cannot be grouped: `grouped_init`
returns None and the caller uses `module.init`.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import scope as flax_scope

Record = tuple[tuple[str, ...], Callable, tuple, dict]  # (param path, init_fn, args, kwargs)


@contextlib.contextmanager
def _recording(records: list[Record]) -> Iterator[None]:
    """Records every param a Flax init creates, with its initializer and arguments."""
    original = flax_scope.Scope.param

    def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):  # type: ignore[no-untyped-def]
        if not self.has_variable("params", name) and self.is_mutable_collection("params"):
            records.append(((*self.path, name), init_fn, init_args, init_kwargs))
        return original(self, name, init_fn, *init_args, unbox=unbox, **init_kwargs)

    flax_scope.Scope.param = param
    try:
        yield
    finally:
        flax_scope.Scope.param = original


class _Ungroupable(Exception):
    pass


def _signature(x: Any) -> Any:
    """A hashable value equal for two initializers (and arguments) only if they compute the
    same thing: functions by code and closed-over values, partials by parts, the rest by
    value. Arrays and tracers raise _Ungroupable."""
    if isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)):
        raise _Ungroupable
    if isinstance(x, types.FunctionType):
        try:
            cells = tuple(_signature(c.cell_contents) for c in x.__closure__ or ())
        except ValueError:  # an empty cell
            raise _Ungroupable from None
        return ("fn", x.__code__, _signature(x.__defaults__), cells)
    if isinstance(x, types.MethodType):
        return ("method", _signature(x.__func__), id(x.__self__))
    if isinstance(x, functools.partial):
        return ("partial", _signature(x.func), _signature(x.args), _signature(x.keywords))
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(_signature(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple(sorted((k, _signature(v)) for k, v in x.items())))
    try:
        hash(x)
    except TypeError:
        raise _Ungroupable from None
    return ("value", type(x), x)


def _nest(flat: dict[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def grouped_init(module: nn.Module, args: tuple) -> Callable[[jax.Array], Any] | None:
    """`init(key) -> params` (unboxed, the tree of `module.init(key, *args)["params"]`) that
    draws repeated initializers together, or None when some initializer cannot be grouped.
    Call it under jit; it is traced once per call of this function's result."""
    records: list[Record] = []
    with _recording(records):
        jax.eval_shape(lambda k: module.init(k, *args), jax.random.key(0))
    groups: dict[Any, list[int]] = {}
    try:
        for i, (_, fn, fn_args, fn_kwargs) in enumerate(records):
            groups.setdefault(_signature((fn, fn_args, fn_kwargs)), []).append(i)
    except _Ungroupable:
        return None

    def draw(key: jax.Array, members: list[int]) -> Any:
        """The group's params stacked on a leading axis, one key each."""
        _, fn, fn_args, fn_kwargs = records[members[0]]
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(members))
        return jax.vmap(lambda k: nn.unbox(fn(k, *fn_args, **fn_kwargs)))(keys)

    def init(key: jax.Array) -> Any:
        flat = {}
        for members in groups.values():
            stacked = draw(key, members)
            for j, i in enumerate(members):
                flat[records[i][0]] = jax.tree.map(lambda v, j=j: v[j], stacked)
        return _nest(flat)

    return init
