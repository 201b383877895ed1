"""`ag.load`, `ag.save`, `ag.export_hf` and `ag.init`: the model handle and its formats.

Formats:
- Hugging Face directories (config.json + safetensors), read by their family
  (`autoglm_jax.families`).
- Our own: `autoglm_config.json` (ModelConfig), `params/` (Orbax), tokenizer files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

import autoglm_jax.sharding as shd
from autoglm_jax.checkpoint.hf import read_hf_tensors, write_hf
from autoglm_jax.checkpoint.random_init import grouped_init
from autoglm_jax.checkpoint.safetensors_io import CheckpointError
from autoglm_jax.checkpoint.shipped import shipped_model_dir
from autoglm_jax.config import ModelConfig, read_json
from autoglm_jax.distributed import barrier, is_primary
from autoglm_jax.families import (
    abstract_params,
    compose_autoglm,
    config_from_hf,
    get_family,
    load_config,
)

NATIVE_CONFIG = "autoglm_config.json"
_INIT_CACHE: dict[Any, Any] = {}


@dataclasses.dataclass
class Model:
    """A loaded model: `module.apply({"params": params}, ...)` runs it.

    `random_init` is True only for `ag.init` (random weights; smoke runs and tests).
    """

    config: ModelConfig
    params: Any
    module: nn.Module
    tokenizer: Any | None = None
    mesh: Mesh | None = None
    rules: str = "auto"
    source: str | None = None
    random_init: bool = False

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.params))


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    name = jnp.dtype(dtype).name
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name}")
    return name


def _shardings(boxed: Any, mesh: Mesh | None, rules: str) -> Any | None:
    return shd.param_shardings(boxed, mesh, rules) if mesh is not None else None


def _load_tokenizer(directory: Path) -> Any | None:
    if not (directory / "tokenizer.json").exists():
        return None
    from autoglm_jax.processing.tokenizer import Tokenizer

    return Tokenizer.from_dir(directory)


def load(
    path: str | os.PathLike,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    rules: str = "auto",
    load_tokenizer: bool = True,
    *,
    audio_encoder: str | os.PathLike | None = None,
    vit_encoder: str | os.PathLike | None = None,
    fusion: Any = None,
    seed: int = 0,
) -> Model:
    """Load a Hugging Face checkpoint directory, one written by `ag.save`, or a model shipped
    in the package by name (`ag.load("autoglm-phone-sim")`, see checkpoint/shipped.py).

    dtype sets both the parameter and the compute dtype (float32 or bfloat16). With a mesh,
    each tensor is placed straight into its sharding under `rules` ("auto": every mesh axis
    larger than 1 splits what its name says; or "tp", "fsdp", "dp"), one
    tensor at a time. Never falls back to random weights: any problem raises an error that
    names the file and key.

    With `audio_encoder` (a Whisper checkpoint directory) and/or `vit_encoder` (a ViT one),
    builds the AutoGLM composite on top of `path` (glm4v, glm or glm4): the encoders are loaded,
    the CGA fusion weights start fresh (seeded by `seed`, gates at zero, sized by `fusion`, a
    FusionConfig, or from the decoder), so the composite equals the base model until trained.
    """
    if audio_encoder is not None or vit_encoder is not None:
        base = load(path, dtype, mesh, rules, load_tokenizer)
        parts = {
            name: load(d, dtype, mesh, rules, load_tokenizer=False)
            for name, d in (("audio", audio_encoder), ("vit", vit_encoder))
            if d is not None
        }
        tok = base.tokenizer
        cfg, params = compose_autoglm(
            base.config,
            base.params,
            fusion=fusion,
            seed=seed,
            mesh=mesh,
            rules=rules,
            **{name: (m.config, m.params) for name, m in parts.items()},
            audio_token_id=tok.token_to_id("<|audio|>") if tok is not None else None,
        )
        module = get_family(cfg.model_type, "model").build(cfg, None)
        return Model(cfg, params, module, tok, mesh, rules, source=str(path))
    directory = shipped_model_dir(path) or Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    dtype_name = _dtype_name(dtype)
    native = directory / NATIVE_CONFIG
    if native.exists():
        cfg = ModelConfig.from_dict(read_json(native), source=str(native))
    else:
        config_path = directory / "config.json"
        if not config_path.exists():
            raise CheckpointError(
                f"{directory}: no config.json (not a Hugging Face checkpoint) "
                f"and no {NATIVE_CONFIG}"
            )
        raw = read_json(config_path)
        cfg = config_from_hf(raw, source=str(config_path))
    cfg = cfg.with_dtypes(dtype_name, dtype_name)
    family = get_family(cfg.model_type, str(directory))
    module = family.build(cfg, None)
    boxed = abstract_params(module, family.example_inputs(cfg))
    shardings = _shardings(boxed, mesh, rules)
    expected = nn.unbox(boxed)
    param_dtype = dtype_name or "float32"
    if native.exists():
        params = _restore_native(directory / "params", expected, shardings, param_dtype)
    else:
        params = read_hf_tensors(directory, family, cfg, expected, shardings, param_dtype)
    tokenizer = _load_tokenizer(directory) if load_tokenizer else None
    return Model(cfg, params, module, tokenizer, mesh, rules, source=str(directory))


INIT_SCHEMES = ("hf", "fan_in")


def init(
    config: ModelConfig | str,
    seed: int = 0,
    dtype: Any = None,
    mesh: Mesh | None = None,
    rules: str = "auto",
    tokenizer: Any | None = None,
    init: str = "hf",
) -> Model:
    """A model with RANDOM weights (smoke runs, tests, benchmarks, training from scratch).
    `random_init` is set.

    init  "hf": matmul kernels normal(0, 0.02), as transformers initialises these models;
          "fan_in": normal(0, 1/sqrt(fan_in)) (`nn.layers.FanInInit`), which keeps the
          signal of small models trained from scratch (embedding and position tables, norms
          and biases are the same under both)."""
    from autoglm_jax.nn.layers import FanInInit

    if init not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {list(INIT_SCHEMES)}, got {init!r}")
    cfg = load_config(config) if isinstance(config, str) else config
    name = _dtype_name(dtype)
    if name:
        cfg = cfg.with_dtypes(name, name)
    family = get_family(cfg.model_type, "config")
    module = family.build(cfg, None)
    initializer = module.clone(dot_general=FanInInit()) if init == "fan_in" else module
    args = family.example_inputs(cfg)
    boxed = abstract_params(module, args)
    shardings = _shardings(boxed, mesh, rules)
    cache_key = (cfg, mesh, rules if mesh is not None else None, init)
    init_fn = _INIT_CACHE.get(cache_key)
    if init_fn is None:  # compiled once per config (tests and CLIs init the same presets often)
        # Repeated layers drawn together: the program does not grow with depth (random_init).
        draw = grouped_init(initializer, args)
        if draw is None:  # initializers that close over arrays (compressed configs)
            draw = lambda key: nn.unbox(initializer.init(key, *args)["params"])  # noqa: E731
        init_fn = jax.jit(
            draw, out_shardings=nn.unbox(shardings) if shardings is not None else None
        )
        _INIT_CACHE[cache_key] = init_fn
    params = init_fn(jax.random.key(seed))
    return Model(cfg, params, module, tokenizer, mesh, rules, source=None, random_init=True)


def export_hf(model: Model, out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` as a Hugging Face directory that transformers loads."""
    out = Path(out_dir)
    family = get_family(model.config.model_type, "model")
    write_hf(out, family, model.config, model.params, model.tokenizer, max_shard_bytes)
    return out


def save(model: Model, out_dir: str | os.PathLike) -> Path:
    """Write our own format: autoglm_config.json, params/ (Orbax), tokenizer files.

    The directory is built beside the target and renamed into place, so an interrupted save
    never leaves a half-written checkpoint where a good one was. In a multi-process run every
    process calls it with the same shared `out_dir`: each writes its own shards of the params
    into one temporary directory, process 0 writes the host-side files and renames it into
    place, and all return once it is there.
    """
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    primary, shared = is_primary(), jax.process_count() > 1
    if shared:  # one temporary directory that every process can name
        tmp = out.with_name(f".{out.name}.tmp-shared")
        if primary:
            shutil.rmtree(tmp, ignore_errors=True)  # a killed run's leftovers
            tmp.mkdir(parents=True)
        barrier(f"ag.save:begin:{out}")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", model.params)
            ckptr.wait_until_finished()
        if primary:
            _write_host_files(model, tmp)
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        barrier(f"ag.save:end:{out}")
    except BaseException:
        if primary:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_host_files(model: Model, directory: Path) -> None:
    (directory / NATIVE_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
    if model.tokenizer is not None:
        model.tokenizer.write_files(directory)


def _restore_native(path: Path, expected: Any, shardings: Any | None, param_dtype: str) -> Any:
    """Restore params/ (Orbax) into `expected`'s shapes. The stored tree is checked against
    the config first (names and shapes), and a read that fails is traced to the parameters
    whose data cannot be read, so every error names the directory and the parameter."""
    import orbax.checkpoint as ocp

    if not path.exists():
        raise CheckpointError(f"{path}: missing params directory")
    unboxed_shardings = nn.unbox(shardings) if shardings is not None else None
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(x: Any, s: Any) -> jax.ShapeDtypeStruct:
        # Integer params (the kernels of a compressed checkpoint) keep their dtype.
        dtype = jnp.dtype(param_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
        return jax.ShapeDtypeStruct(x.shape, dtype, sharding=s or dev)

    if unboxed_shardings is None:
        abstract = jax.tree.map(lambda x: target(x, None), expected)
    else:
        abstract = jax.tree.map(target, expected, unboxed_shardings)
    path = path.absolute()  # Orbax wants absolute paths
    with _quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
        _check_stored_tree(ckptr, path, abstract)
        try:
            return ckptr.restore(path, abstract)
        except Exception as e:  # noqa: BLE001 - TensorStore raises bare Exceptions
            raise CheckpointError(_unreadable(path, abstract, e)) from None


def _flat(tree: Any) -> dict[str, Any]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in p): leaf
        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _check_stored_tree(ckptr: Any, path: Path, abstract: Any) -> None:
    """Parameter names and shapes stored in `path` against what the config expects."""
    try:
        meta = ckptr.metadata(path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: the checkpoint's metadata cannot be read "
            f"({_first_line(e)}); the checkpoint is damaged or incomplete"
        ) from None
    tree = getattr(meta, "item_metadata", meta)
    stored = _flat(getattr(tree, "tree", tree))
    if not stored:  # no tree metadata (_METADATA lost): the restore itself will tell
        return
    wanted = _flat(abstract)
    config = path.parent / NATIVE_CONFIG
    problems = [f"missing parameter {k}" for k in wanted if k not in stored]
    problems += [f"unexpected parameter {k}" for k in stored if k not in wanted]
    for k, want in wanted.items():
        got = getattr(stored.get(k), "shape", None)
        if got is not None and tuple(got) != tuple(want.shape):
            problems.append(
                f"parameter {k}: stored shape {tuple(got)}, but {config.name} "
                f"says {tuple(want.shape)}"
            )
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        raise CheckpointError(f"{path}: does not match {config}: {shown}")


def _unreadable(path: Path, abstract: Any, error: Exception) -> str:
    """Which parameters cannot be read: each is restored alone (only on this error path)."""
    import orbax.checkpoint as ocp

    bad = []
    flat = _flat(abstract)
    with ocp.PyTreeCheckpointer() as one:
        for name, leaf in flat.items():
            item: dict[str, Any] = {}
            node = item
            keys = name.split("/")
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = leaf
            restore_args = jax.tree.map(
                lambda x: ocp.ArrayRestoreArgs(
                    sharding=x.sharding, global_shape=x.shape, dtype=x.dtype
                ),
                item,
            )
            try:
                one.restore(
                    path,
                    args=ocp.args.PyTreeRestore(
                        item=item, restore_args=restore_args, partial_restore=True
                    ),
                )
            except Exception:  # noqa: BLE001
                bad.append(name)
    names = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    what = f"parameter(s) {names}" if bad else "its parameters"
    return (
        f"{path}: cannot read {what}: the data files are damaged or incomplete "
        f"({_first_line(error)})"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split(" See full TensorStore details")[0][:300]


@contextlib.contextmanager
def _quiet_orbax() -> Any:
    """Orbax and TensorStore report a failed read at length on top of the exception (log
    records, 'Exception ignored in coroutine' from abandoned reads); the CheckpointError says
    what matters, so they are muted while restoring."""
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio")]
    levels = [lg.level for lg in loggers]
    hook = sys.unraisablehook
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()  # the abandoned reads' coroutines report when collected: do it now
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        sys.unraisablehook = hook
