"""Compression commands of the trainer: QAT, structured pruning, compressed export (the
table that compares them is `train/report.py`, `python -m train report`).

    recipe = load_compress_recipe("configs/recipes/qat-int8.toml", {"steps": 10})
    result = run_qat(recipe)                       # fake-quantized student, float param tree
    out = run_export(result.run_dir / "model", "int8", recipe=recipe)   # integer weights
    pruned_dir, report = run_prune(load_compress_recipe("configs/recipes/prune-35.toml"))

A compression recipe is a training recipe (`TrainRecipe`) plus two optional tables: `[quant]`
(a `QuantConfig`) and `[prune]` (a `PruneConfig`). `load_compress_recipe` pops them from the
TOML (and from the overrides) and hands the rest to the trainer's recipe loader, so every
training field, check and error message is the trainer's own. `CompressRecipe` is a
`TrainRecipe` subclass: `run_pretrain` / `run_distill` take it as is (its checkpoints' meta
records the tables).

This module only wires the library (`autoglm_jax.quant`, `autoglm_jax.compress`) into the
loop (`run_pretrain` / `run_distill` with `model=`); it changes neither.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp

import autoglm_jax.checkpoint as ckpt
from autoglm_jax.config import ConfigError
from autoglm_jax.config._common import from_dict, read_toml
from autoglm_jax.config.quant import PruneConfig, QuantConfig
from autoglm_jax.sharding import make_mesh
from autoglm_jax.training.loop import initial_model, recipe_tokenizer
from autoglm_jax.training.recipe import TrainRecipe, merge, recipe_from_dict


@dataclasses.dataclass(frozen=True)
class CompressRecipe(TrainRecipe):
    """A TrainRecipe plus the optional [quant] (QAT / export) and [prune] tables."""

    quant: QuantConfig | None = None
    prune: PruneConfig | None = None

    @classmethod
    def of(
        cls, train: TrainRecipe, quant: QuantConfig | None = None, prune: PruneConfig | None = None
    ) -> "CompressRecipe":
        fields = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainRecipe)}
        return cls(**fields, quant=quant, prune=prune)

    def train_recipe(self) -> TrainRecipe:
        """The plain TrainRecipe part (what the CLI's training options parse into)."""
        return TrainRecipe(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainRecipe)}
        )


def load_compress_recipe(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> CompressRecipe:
    """A CompressRecipe from a TOML file: [quant] and [prune] (if present, merged with
    `overrides["quant"]` / `overrides["prune"]`) parse into their dataclasses, everything else
    goes through `load_recipe` (same overrides, same errors)."""
    data: dict[str, Any] = {}
    source = "recipe"
    if path is not None:
        source = str(path)
        data = read_toml(path, "recipe file")
    overrides = dict(overrides or {})
    tables: dict[str, Any] = {}
    for key, cls in (("quant", QuantConfig), ("prune", PruneConfig)):
        table, over = data.pop(key, None), overrides.pop(key, None)
        if table is None and over is None:
            tables[key] = None
            continue
        for name, t in ((source, table), ("overrides", over)):
            if t is not None and not isinstance(t, dict):
                raise ConfigError(f"{name}: field `{key}`: expected a table, got {t!r}")
        merged = {**(table or {}), **(over or {})}
        tables[key] = from_dict(cls, merged, source=f"{source} [{key}]")
    # the rest exactly as load_recipe treats a file (it reads the file itself, so its two
    # steps, merge and recipe_from_dict, are called here on the file minus the two tables)
    train = recipe_from_dict(merge(data, overrides), source=source)
    return CompressRecipe.of(train, tables["quant"], tables["prune"])


# --- helpers ---------------------------------------------------------------------------------


def _log(msg: str) -> None:
    from autoglm_jax.training.loop import log

    log(msg)


def _mesh(recipe: TrainRecipe) -> Any:
    m = recipe.mesh
    return make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)


def _initial_model(recipe: TrainRecipe) -> ckpt.Model:
    """The model the recipe describes (model.init_from, else the preset), as the loop builds it."""
    return initial_model(recipe, _mesh(recipe))


def _need(value: Any, section: str, recipe: TrainRecipe) -> Any:
    if value is None:
        raise ConfigError(f"recipe {recipe.name!r}: this command needs a [{section}] table")
    return value


def calibration_batches(
    recipe: TrainRecipe, tokenizer: Any, n: int, config: Any = None
) -> list[dict[str, Any]]:
    """The first `n` batches of the recipe's data (training format, numpy); `config`: the
    model's ModelConfig, needed when the data holds images or audio (they are preprocessed
    for that model, as training does)."""
    from autoglm_jax.training.data import make_dataset
    from autoglm_jax.training.media import processor_for

    data = dataclasses.replace(recipe.data, prefetch=0)
    processor = processor_for(config, tokenizer, data) if config is not None else None
    it = iter(make_dataset(data, tokenizer, media_processor=processor)[0])
    try:
        return [next(it) for _ in range(n)]
    finally:
        if hasattr(it, "close"):
            it.close()


# --- commands --------------------------------------------------------------------------------


def run_qat(
    recipe: CompressRecipe,
    *,
    resume: bool = False,
    model: ckpt.Model | None = None,
    teacher: ckpt.Model | None = None,
) -> Any:
    """Quantization-aware training: the recipe's model (or `model`) with the [quant] table's
    fake-quant policy injected, trained by the loop as usual; distilled from distill.teacher
    (or `teacher`) when there is one, else next-token loss. The checkpoints and <run_dir>/model
    hold the float param tree (what `run_export` reads); `result.model` has the QAT module."""
    from autoglm_jax.quant import qat_model
    from autoglm_jax.training.loop import run_distill, run_pretrain

    quant = _need(recipe.quant, "quant", recipe)
    base = model if model is not None else _initial_model(recipe)
    student = qat_model(base, quant)
    if teacher is not None or recipe.distill.teacher:
        return run_distill(recipe, resume=resume, teacher=teacher, model=student)
    return run_pretrain(recipe, resume=resume, model=student)


@dataclasses.dataclass(frozen=True)
class PruneResult:
    out_dir: Path  # the pruned model (ag.save)
    report: Any  # compress.PruneReport
    model: ckpt.Model  # the pruned model
    recovered: Any = None  # the distillation RunResult when recovery ran


def run_prune(
    recipe: CompressRecipe,
    *,
    model: ckpt.Model | None = None,
    out_dir: str | Path | None = None,
    recover: bool = False,
    resume: bool = False,
    teacher: ckpt.Model | None = None,
) -> PruneResult:
    """Prune the unpruned model (`model`, else distill.teacher, else model.init_from) to the
    [prune] table's share of decoder FLOPs, ranking units on the first calibration_batches
    batches of the recipe's data; `ag.save` it to `out_dir` (default <run_dir>/pruned).

    recover: then distill the unpruned model (or `teacher`) into the pruned one with the
    recipe's training settings (model.init_from = out_dir), as `python -m train distill`
    would."""
    from autoglm_jax.compress import prune_model
    from autoglm_jax.training.loop import run_distill

    cfg = _need(recipe.prune, "prune", recipe)
    if model is None:
        src = recipe.distill.teacher or recipe.model.init_from
        if not src:
            raise ConfigError(
                f"recipe {recipe.name!r}: prune needs the unpruned model: set "
                "distill.teacher (or model.init_from) to a checkpoint"
            )
        model = ckpt.load(src, dtype=jnp.dtype(recipe.model.param_dtype))
    tokenizer = recipe_tokenizer(recipe, model)
    batches = calibration_batches(recipe, tokenizer, cfg.calibration_batches, model.config)
    pruned, report = prune_model(model, batches, cfg)
    pruned = dataclasses.replace(pruned, tokenizer=tokenizer)
    out = Path(out_dir) if out_dir is not None else Path(recipe.run_dir) / "pruned"
    ckpt.save(pruned, out)
    _log(
        f"pruned {cfg.flops_reduction:.0%} target: decoder FLOPs/token {report.flops_before:,}"
        f" -> {report.flops_after:,} ({report.reduction:.1%} removed) | heads per layer "
        f"{list(report.heads)} | FFN per layer {list(report.ffw)} | ranked on "
        f"{report.tokens:,} tokens | wrote {out}"
    )
    recovered = None
    if recover:
        r = recipe.replace(model=dataclasses.replace(recipe.model, init_from=str(out)))
        recovered = run_distill(r, resume=resume, teacher=teacher if teacher is not None else model)
    return PruneResult(out, report, pruned, recovered)


def run_export(
    qat_checkpoint: str | Path,
    fmt: Literal["int8", "int4"],
    *,
    recipe: CompressRecipe | None = None,
    out_dir: str | Path | None = None,
    scope: Literal["decoder", "all"] | None = None,
) -> Path:
    """Write the compressed checkpoint of a QAT run's model: integer weights plus scales and
    the config that says so (`ag.load` reads it). The quant rules are the recipe's [quant]
    table (the exact-logits promise needs the table QAT used), else QuantConfig(weights=fmt)
    with its defaults; `scope` overrides its scope (use QAT's). Default out_dir:
    `<qat_checkpoint>-<fmt>`."""
    from autoglm_jax.quant import export_quantized, weight_bytes

    quant = recipe.quant if recipe is not None and recipe.quant is not None else None
    if quant is None:
        quant = QuantConfig(weights=fmt)
    elif quant.weights != fmt:
        raise ConfigError(
            f"--format {fmt} but the recipe's [quant] table has weights = {quant.weights!r}"
        )
    if scope is not None:
        quant = quant.replace(scope=scope)
    src = Path(qat_checkpoint)
    model = ckpt.load(src)
    if model.config.text is not None and model.config.text.quant is not None:
        raise ConfigError(f"{src} is already a compressed checkpoint")
    small = export_quantized(model, quant)
    out = Path(out_dir) if out_dir is not None else src.with_name(f"{src.name}-{fmt}")
    ckpt.save(small, out)
    b = weight_bytes(ckpt.load(out, dtype=jnp.bfloat16, load_tokenizer=False))
    _log(
        f"exported {src} as {fmt} -> {out} | weights loaded in bf16: {b['total']:,} bytes "
        f"({b['total'] / b['bf16']:.1%} of the float model's bf16 {b['bf16']:,})"
    )
    return out
