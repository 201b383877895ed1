"""Reading and writing Hugging Face checkpoint directories (config.json + safetensors)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from autoglm_jax.checkpoint.safetensors_io import CheckpointError, SafetensorsIndex, save_file
from autoglm_jax.families.family import Family
from autoglm_jax.families.keymap import (
    get_path,
    join_parts,
    part_shape,
    set_path,
    state_dict_from_params,
)

_NP_DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}


def read_hf_tensors(
    directory: Path,
    family: Family,
    cfg: Any,
    expected: Any,
    shardings: Any | None,
    param_dtype: str,
) -> dict[str, Any]:
    """Read every mapped tensor, one at a time: check it, convert its layout, cast it and place
    it straight into its target sharding (or the default device). `expected` is the tree of
    ShapeDtypeStructs from eval_shape. Errors name the file and key."""
    index = SafetensorsIndex(directory)
    maps = family.tensor_maps(cfg)
    mapped = {m.hf_key for m in maps}
    unexpected = [k for k in index.keys() if k not in mapped and not family.ignored(k, cfg)]
    if unexpected:
        shown = ", ".join(f"`{k}` (in {index.file_of(k).name})" for k in unexpected[:5])
        raise CheckpointError(
            f"{directory}: unexpected key(s) for a {family.name} model: {shown}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    missing = [m.hf_key for m in maps if m.hf_key not in index.keys()]
    if missing:
        raise CheckpointError(
            f"{directory}: missing key(s) for a {family.name} model: "
            + ", ".join(f"`{k}`" for k in missing[:5])
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    target = _NP_DTYPES[param_dtype]
    params: dict[str, Any] = {}
    num_parts = Counter(m.path for m in maps if m.part is not None)
    pending: dict[tuple[str, ...], dict[int, np.ndarray]] = {}  # leaves fused from several keys
    for m in maps:
        want = get_path(expected, m.path)
        shape = part_shape(want.shape, m.part)
        arr = index.get(m.hf_key)
        problem = None
        if arr.size != int(np.prod(shape)):
            problem = "size"
        else:
            try:
                arr = m.to_flax(arr)
            except ValueError:
                problem = "layout"
            if problem is None and tuple(arr.shape) != shape:
                problem = "layout"
        if problem:
            part = "" if m.part is None else f", slice {m.part[1]} of axis {m.part[0]}"
            raise CheckpointError(
                f"{index.file_of(m.hf_key)}: key `{m.hf_key}`: shape mismatch: checkpoint has "
                f"{list(index.shape(m.hf_key))}, the config expects {list(shape)} "
                f"(our layout of param {'/'.join(m.path)}{part})"
            )
        if not np.issubdtype(arr.dtype, np.floating) and arr.dtype != target:
            raise CheckpointError(
                f"{index.file_of(m.hf_key)}: key `{m.hf_key}`: expected a "
                f"floating tensor, got {arr.dtype}"
            )
        arr = arr.astype(target, copy=False)
        if m.part is not None:  # place the leaf once all its slices are read
            got = pending.setdefault(m.path, {})
            got[m.part[1]] = arr
            if len(got) < num_parts[m.path]:
                continue
            arr = join_parts(pending.pop(m.path), m.part[0])
        sharding = get_path(shardings, m.path) if shardings is not None else None
        set_path(
            params,
            m.path,
            jax.device_put(arr, sharding) if sharding is not None else jax.device_put(arr),
        )
        del arr
    got = jax.tree.structure(params)
    want_struct = jax.tree.structure(expected)
    if got != want_struct:
        raise CheckpointError(
            f"{directory}: the tensor maps of {family.name} do not cover the "
            "model's parameters (a bug in the key map)"
        )
    return params


def _to_numpy(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def write_hf(
    directory: Path,
    family: Family,
    cfg: Any,
    params: Any,
    tokenizer: Any | None,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Write an HF directory that transformers' `from_pretrained` loads: config.json,
    model.safetensors (or shards + index.json past max_shard_bytes), tokenizer files."""
    directory.mkdir(parents=True, exist_ok=True)
    maps = family.tensor_maps(cfg)
    host = jax.tree.map(_to_numpy, params)
    state = state_dict_from_params(maps, host)
    total = sum(a.nbytes for a in state.values())
    if total <= max_shard_bytes:
        save_file(state, directory / "model.safetensors")
    else:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for key in sorted(state):
            if size and size + state[key].nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = state[key]
            size += state[key].nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, directory / name)
            weight_map.update({k: name for k in shard})
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (directory / "config.json").write_text(json.dumps(family.config_to_hf(cfg), indent=2))
    if tokenizer is not None:
        tokenizer.write_files(directory)
