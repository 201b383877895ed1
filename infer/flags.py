"""The flags every `python -m infer` command shares, defined once.

`EngineFlags` is derived from `EngineConfig`: same fields, types, defaults and docs, under
vLLM's flag names (`page_size` is `--block-size`, `num_pages` is `--num-gpu-blocks-override`).
`ModelFlags` says which weights to run and how. `generate`, `chat`, `bench` and `serve` embed
both, so a flag means the same thing, with the same default, in every command.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, TextIO, cast

import tyro

from autoglm_jax.engine import Engine, EngineConfig

# EngineConfig field -> vLLM's flag name, where vLLM's differs.
VLLM_NAMES = {"page_size": "block_size", "num_pages": "num_gpu_blocks_override"}


def _field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string right after each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _derive_flags(cls: type, renames: dict[str, str], name: str) -> type:
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    fields = []
    for f in dataclasses.fields(cls):
        annotated = Annotated[hints[f.name], tyro.conf.arg(help=docs.get(f.name))]
        fields.append(
            (renames.get(f.name, f.name), annotated, dataclasses.field(default=f.default))
        )
    return dataclasses.make_dataclass(name, fields, frozen=True)


_EngineFlagsBase = _derive_flags(EngineConfig, VLLM_NAMES, "_EngineFlagsBase")


class EngineFlags(_EngineFlagsBase):  # type: ignore[misc, valid-type]
    """Engine flags: `EngineConfig`'s fields under vLLM's names."""

    def engine_config(self) -> EngineConfig:
        """The EngineConfig these flags stand for; a bad value raises SystemExit naming the
        flag."""
        config = EngineConfig(
            **{
                f.name: getattr(self, VLLM_NAMES.get(f.name, f.name))
                for f in dataclasses.fields(EngineConfig)
            }
        )
        try:
            config.validate()
        except ValueError as e:
            raise SystemExit(flag_message(str(e))) from None
        return config


def flag_message(message: str) -> str:
    """`EngineConfig.page_size: ...` -> `--block-size: ...`."""

    def flag(m: re.Match[str]) -> str:
        return "--" + VLLM_NAMES.get(m.group(1), m.group(1)).replace("_", "-")

    return re.sub(r"EngineConfig\.(\w+)", flag, message)


class _CurrentStream:
    """sys.stdout / stderr / stdin as they are when written to, not when a default argument
    was bound: a module first imported while a test captures output would otherwise keep
    the capture's stream, closed after that test."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(getattr(sys, self._name), attr)


STDOUT = cast(TextIO, _CurrentStream("stdout"))
STDERR = cast(TextIO, _CurrentStream("stderr"))
STDIN = cast(TextIO, _CurrentStream("stdin"))


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "autoglm_jax", "jax_compilation_cache")


@dataclasses.dataclass(frozen=True)
class ModelFlags:
    """Which weights to run, and how."""

    model: str = "autoglm-phone-sim"
    """A checkpoint directory (Hugging Face or `ag.save`), a model shipped in the package
    (`autoglm-phone-sim`: the phone agent trained on the simulated phone, int8), or a preset
    name (`tiny`, `tiny-mm`, ...) for a smoke run with RANDOM weights."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weight and compute dtype; auto: bfloat16 on accelerators, float32 on CPU."""
    tensor_parallel_size: int = 1
    """Devices the weights and KV pages are split over (2 on the 2x RTX 4090 rig)."""
    quantize: Literal["none", "int8", "int4"] = "none"
    """Quantize the decoder's matmul weights at load, weight-only (int8: one scale per output
    channel; int4: per group of 128 inputs); lm_head and embeddings stay float. What `train
    export` writes, minus QAT: decode reads about half (int8) the weight bytes."""
    compilation_cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    """JAX persistent compilation cache: restarts read compiled programs from here
    instead of compiling again. An empty string turns it off."""

    def validate(self) -> None:
        if self.tensor_parallel_size < 1:
            raise SystemExit(
                f"--tensor-parallel-size: must be positive, got {self.tensor_parallel_size}"
            )


def enable_compilation_cache(path: str) -> None:
    """Point JAX's persistent compilation cache at `path` (every program is cached, however
    quick it was to compile: small models are what a restart would otherwise wait for)."""
    if not path:
        return
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_model(flags: ModelFlags, seed: int = 0, log: TextIO = STDERR) -> Any:
    """A checkpoint directory, or a preset with random weights (announced as a smoke run)."""
    import jax

    import autoglm_jax as ag
    from autoglm_jax.checkpoint.shipped import SHIPPED_MODELS, shipped_model_dir
    from autoglm_jax.config import preset_names
    from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer

    flags.validate()
    enable_compilation_cache(flags.compilation_cache_dir)
    mesh = (
        ag.make_mesh(tensor=flags.tensor_parallel_size) if flags.tensor_parallel_size > 1 else None
    )
    dtype = flags.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    try:
        shipped = shipped_model_dir(flags.model)
    except FileNotFoundError as e:
        raise SystemExit(f"--model: {e}") from None
    if shipped is not None or Path(flags.model).is_dir():
        print(f"loading {shipped or flags.model} ({dtype})", file=log, flush=True)
        return _quantized(ag.load(shipped or flags.model, dtype=dtype, mesh=mesh), flags, log)
    if flags.model not in preset_names():
        raise SystemExit(
            f"--model {flags.model!r}: not a directory, a shipped model "
            f"({', '.join(SHIPPED_MODELS)}) or a preset (presets: {', '.join(preset_names())})"
        )
    banner = (
        f"SMOKE RUN: preset {flags.model!r} with RANDOM weights; its text is noise. "
        "Pass --model DIR for a real checkpoint."
    )
    print("=" * len(banner), banner, "=" * len(banner), sep="\n", file=log, flush=True)
    model = ag.init(flags.model, seed=seed, dtype=dtype, mesh=mesh)
    tokenizer = Tokenizer.from_dir(TINY_TOKENIZER_DIR)
    if model.config.text.vocab_size >= tokenizer.vocab_size:
        model = dataclasses.replace(model, tokenizer=tokenizer)
    return _quantized(model, flags, log)


def _quantized(model: Any, flags: ModelFlags, log: TextIO) -> Any:
    """`model` with its decoder weights quantized as --quantize asks (unchanged for none)."""
    if flags.quantize == "none":
        return model
    from autoglm_jax.quant import QuantConfig, export_quantized, tree_bytes

    before = tree_bytes(model.params)
    try:
        model = export_quantized(model, QuantConfig(weights=flags.quantize))
    except ValueError as e:  # already quantized, or no GLM decoder
        raise SystemExit(f"--quantize {flags.quantize}: {e}") from None
    after = tree_bytes(model.params)
    print(
        f"quantized the decoder to {flags.quantize}: weights {before:,} -> {after:,} bytes",
        file=log,
        flush=True,
    )
    return model


def build_engine(model_flags: ModelFlags, engine_flags: EngineFlags) -> Engine:
    config = engine_flags.engine_config()
    model = load_model(model_flags, seed=config.seed)
    try:
        return Engine(model, config, mesh=model.mesh)
    except ValueError as e:
        raise SystemExit(flag_message(str(e))) from None


def warm_up(
    engine: Engine, log: TextIO = STDERR, image_sizes: Sequence[tuple[int, int]] = ()
) -> float:
    """Compile every step shape (and the vision tower for one image of each (height, width)
    in image_sizes), one progress line a step shape; returns the seconds it took."""
    import time

    start = time.perf_counter()

    def progress(k: int, n: int, bucket: int, seconds: float) -> None:
        print(
            f"compiling: step shape {k} of {n} ({bucket} tokens), {seconds:.1f} s",
            file=log,
            flush=True,
        )

    engine.warmup(progress=progress, image_sizes=image_sizes)
    return time.perf_counter() - start
