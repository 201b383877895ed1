"""Meshes and logical-axis sharding rules.

Every weight carries logical axis names (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`,
`vocab`, `norm`, ...) from `autoglm_jax.nn.layers`. A rules table, chosen by the caller (trainer,
engine, loader), maps them to the mesh axes ("data", "fsdp", "tensor"). Model code never names
mesh axes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# A rule maps a logical name to a mesh axis, a tuple of mesh axes, or None (replicated).
Rules = Mapping[str, str | tuple[str, ...] | None]

_TENSOR = {"heads": "tensor", "kv_heads": "tensor", "mlp": "tensor", "vocab": "tensor"}

_AUTO = {"batch": ("data", "fsdp"), "embed": "fsdp", **_TENSOR}

RULES: dict[str, Rules] = {
    # The default: every mesh axis larger than 1 splits what its name says (data and fsdp the
    # batch, fsdp the weights along `embed`, tensor the heads, MLP neurons and vocabulary);
    # an axis of size 1 splits nothing, so on a tensor-only mesh this is "tp".
    "auto": _AUTO,
    # Tensor parallel (the 2x RTX 4090 rig: tensor=2): attention split by head, MLP by neuron.
    "tp": {"batch": ("data", "fsdp"), **_TENSOR},
    # Fully sharded data parallel: weights split along `embed` over fsdp, plus tensor rules.
    "fsdp": {"batch": ("data", "fsdp"), "embed": "fsdp", **_TENSOR},
    # Data parallel: weights replicated, batch split.
    "dp": {"batch": ("data", "fsdp")},
}


def make_mesh(
    data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh with axes ("data", "fsdp", "tensor") over the first data*fsdp*tensor devices
    (all processes' devices in a multi-host run after `jax.distributed.initialize()`)."""
    n = data * fsdp * tensor
    devices = list(devices) if devices is not None else jax.devices()
    if n > len(devices):
        raise ValueError(
            f"make_mesh(data={data}, fsdp={fsdp}, tensor={tensor}) needs {n} devices, "
            f"only {len(devices)} available"
        )
    grid = np.asarray(devices[:n], dtype=object).reshape(data, fsdp, tensor)
    return Mesh(grid, MESH_AXES)


def get_rules(rules: str | Rules) -> Rules:
    if isinstance(rules, str):
        if rules not in RULES:
            raise ValueError(f"unknown sharding rules {rules!r} (presets: {sorted(RULES)})")
        return RULES[rules]
    return rules


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """PartitionSpec for an array with logical axis `names`. A dimension that its mesh axes do
    not divide is replicated (e.g. 2 KV heads on tensor=4), and a mesh axis is used once."""
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        axes = rules.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        axes_t = tuple(a for a in axes_t if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in axes_t)
        if not axes_t or dim % size:
            out.append(None)
            continue
        used.update(axes_t)
        out.append(axes_t[0] if len(axes_t) == 1 else axes_t)
    return P(*out)


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def param_shardings(boxed_params: Any, mesh: Mesh, rules: str | Rules) -> Any:
    """NamedShardings for a params tree whose leaves are `nn.LogicallyPartitioned` boxes (as
    returned by `module.init` or its `jax.eval_shape`); unboxed leaves are replicated."""
    rules = get_rules(rules)

    def one(x: Any) -> NamedSharding:
        if _is_boxed(x):
            return NamedSharding(mesh, spec_for(x.names, x.value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_params, is_leaf=_is_boxed)


def logical_names(boxed_params: Any) -> Any:
    """The tree of logical axis-name tuples (None for unnamed leaves)."""
    return jax.tree.map(
        lambda x: tuple(x.names) if _is_boxed(x) else None, boxed_params, is_leaf=_is_boxed
    )


def unbox(tree: Any) -> Any:
    return nn.unbox(tree)


def shard_params(params: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)


def per_device_bytes(tree: Any) -> dict[jax.Device, int]:
    """Bytes of `tree`'s arrays resident on each device (addressable shards)."""
    out: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def batch_sharding(mesh: Mesh, rules: str | Rules, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, ...] activation batch: B over the rules' batch axes."""
    spec = get_rules(rules).get("batch")
    return NamedSharding(mesh, P(spec, *([None] * (ndim - 1))))


ShardingFn = Callable[[Any], Any]
