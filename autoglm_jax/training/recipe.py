"""Training recipes: frozen dataclasses, read from TOML, overridden from the command line.

    recipe = load_recipe("configs/recipes/tiny-pretrain.toml", {"optim": {"lr": 3e-4}})
    recipe = recipe.replace(steps=10)

A recipe file has top-level fields (`steps`, `run_dir`, ...) and one table per section:
[data], [optim], [model], [mesh], [checkpoint], [distill]. Unknown keys are errors that name
the file and the field. The attribute docstrings below are the `--help` text of the CLI.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

from autoglm_jax.config import ConfigError, ModelConfig, load_config
from autoglm_jax.config._common import from_dict, read_toml, to_dict

SyntheticTask = Literal["count", "copy", "reverse", "add", "image", "audio"]
DtypeName = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class DataRecipe:
    """Where examples come from and how they become [B, T] batches."""

    source: Literal["synthetic", "chat", "text"] = "synthetic"
    """synthetic: the seeded task generator; chat: JSONL of {"messages": [...]}; text: JSONL
    of {"text": ...}."""
    paths: tuple[str, ...] = ()
    """JSONL files for the chat and text sources (relative paths are from the working dir)."""
    tokenizer: str = ""
    """Tokenizer folder; empty: the model checkpoint's tokenizer, else the tiny one."""
    seq_len: int = 128
    """Tokens per row. Longer examples are truncated."""
    batch_size: int = 8
    """Rows per micro-batch (global, over all devices)."""
    mode: Literal["pack", "pad"] = "pack"
    """pack: several examples per row with segment ids, positions restart per segment;
    pad: one example per row, padded to seq_len (or less: `length_groups`)."""
    length_groups: int = 0
    """pad mode, JSONL sources: batches are drawn from windows of this many batches' records
    sorted by size, and each is padded only to its longest example rounded up to
    `pad_multiple` (0: every row padded to seq_len). Records of similar length then share a
    batch, so less of each step is padding; the step compiles once per batch length."""
    pad_multiple: int = 64
    """With `length_groups`: batch lengths are multiples of this (capped at seq_len)."""
    packing_bins: int = 8
    """How many rows the first-fit packer fills at once (more: less padding)."""
    seed: int = 0
    """Seeds the shuffle and the synthetic generator."""
    shuffle: bool = True
    skip_bad_records: bool = False
    """Skip (and count) malformed JSONL lines instead of failing on the first one."""
    prefetch: int = 2
    """Batches prepared ahead on a background thread (0: none)."""
    read_threads: int = 0
    """Threads that read and tokenize examples ahead of the packer (0: done inline, on the
    prefetch thread; raise it for slow sources such as image decoding)."""
    synthetic_tasks: tuple[SyntheticTask, ...] = ("count", "copy", "reverse", "add")
    """Tasks the synthetic source draws from: text (count, copy, reverse, add), image (count,
    shape, colour or place of drawn shapes) and audio (number of beeps or their pitch). image
    and audio need a glm4v/autoglm model and mode = "pad"."""
    synthetic_size: int = 100_000
    """Examples per synthetic epoch (example i is a pure function of seed and i)."""
    synthetic_max_len: int = 8
    """Longest string of the count/copy/reverse tasks (sums use numbers below 100)."""
    max_images: int = 1
    """Most images in one example; every batch of a dataset with images carries
    batch_size * max_images images (zero padding), so its shapes stay fixed."""
    max_audio_windows: int = 1
    """Most 30 s audio windows in one example (batch_size * max_audio_windows per batch)."""


@dataclasses.dataclass(frozen=True)
class OptimRecipe:
    """AdamW with global-norm clipping, warmup + cosine decay, accumulation and freezing."""

    lr: float = 3e-4
    """Peak learning rate."""
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine decay over all steps)."""
    weight_decay: float = 0.1
    """Decoupled weight decay; never applied to norms and biases."""
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    """Global gradient-norm clip (0: off)."""
    grad_accum: int = 1
    """Micro-batches per optimizer update (optax.MultiSteps)."""
    train: Literal["all", "cga"] = "all"
    """all: every parameter trains (or those `trainable` names); cga: only the CGA fusion
    (`fusion/*`: the gated cross-attention blocks and the modality projectors)."""
    trainable: tuple[str, ...] = ()
    """Glob patterns over parameter paths like 'layers_0/mlp/*'; empty: train everything."""
    max_nonfinite: int = 5
    """Stop after this many consecutive steps with a NaN/inf loss or gradient (each is
    skipped: no update)."""


@dataclasses.dataclass(frozen=True)
class ModelRecipe:
    """The model being trained (the student when distilling)."""

    preset: str = "tiny"
    """Preset name or TOML path for a randomly initialized model."""
    init_from: str = ""
    """A checkpoint directory `ag.load` reads; when set, `preset` is ignored."""
    seed: int = 0
    """Seeds the random initialization."""
    init: Literal["hf", "fan_in"] = "hf"
    """Random init of matmul kernels: "hf" normal(0.02) as transformers; "fan_in"
    normal(1/sqrt(fan_in)), for small models trained from scratch (see `ag.init`)."""
    param_dtype: DtypeName = "float32"
    """Master weights (and optimizer state) dtype."""
    dtype: DtypeName = "float32"
    """Compute dtype; bfloat16 with float32 params is mixed precision."""
    num_layers: int | None = None
    """Overrides of the preset's sizes (a smaller student); unset: the preset's."""
    d_model: int | None = None
    ffw_dim: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None


@dataclasses.dataclass(frozen=True)
class MeshRecipe:
    """Device mesh ("data", "fsdp", "tensor") and the logical-axis rules preset."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    rules: Literal["fsdp", "tp", "dp"] = "fsdp"


@dataclasses.dataclass(frozen=True)
class CheckpointRecipe:
    """Orbax checkpoints under <run_dir>/checkpoints."""

    every: int = 100
    """Save every this many optimizer steps (and always at the end)."""
    keep: int = 3
    """Checkpoints kept (older ones are deleted)."""
    async_save: bool = True
    """Write in a background thread while training continues."""
    export: bool = True
    """At the end, also write the final model to <run_dir>/model with `ag.save` (what
    `ag.load` and distill.teacher read)."""


@dataclasses.dataclass(frozen=True)
class DistillRecipe:
    """loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE + beta * hidden MSE."""

    teacher: str = ""
    """Teacher checkpoint directory (`ag.load`); same vocabulary as the student."""
    alpha: float = 0.5
    temperature: float = 2.0
    beta: float = 0.0
    """Weight of the hidden-state MSE (needs layer_map and equal widths)."""
    layer_map: tuple[tuple[int, int], ...] = ()
    """(student layer, teacher layer) pairs whose outputs are matched by the MSE."""


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """A whole training run."""

    name: str = "run"
    steps: int = 1000
    """Optimizer updates (each is grad_accum micro-batches)."""
    run_dir: str = "checkpoints/run"
    """Checkpoints, metrics.jsonl, TensorBoard events and loss.png go here."""
    log_every: int = 1
    """Write metrics every this many steps."""
    seed: int = 0
    """Seeds the training RNG carried in the state (saved with checkpoints)."""
    progress: bool = True
    """Show a progress bar on stderr."""
    data: DataRecipe = DataRecipe()
    optim: OptimRecipe = OptimRecipe()
    model: ModelRecipe = ModelRecipe()
    mesh: MeshRecipe = MeshRecipe()
    checkpoint: CheckpointRecipe = CheckpointRecipe()
    distill: DistillRecipe = DistillRecipe()

    def replace(self, **changes: Any) -> "TrainRecipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self) -> "TrainRecipe":
        """Cross-field checks; returns self. Errors name the field."""

        def need(ok: bool, field: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"recipe {self.name!r}: field `{field}`: {msg}")

        _check_choices(self, self.name)
        d, o = self.data, self.optim
        need(self.steps > 0, "steps", f"must be positive, got {self.steps}")
        need(d.seq_len > 1, "data.seq_len", f"must be > 1, got {d.seq_len}")
        need(d.batch_size > 0, "data.batch_size", f"must be positive, got {d.batch_size}")
        need(
            d.source == "synthetic" or bool(d.paths),
            "data.paths",
            f"the {d.source} source needs at least one JSONL file",
        )
        need(
            bool(d.synthetic_tasks) or d.source != "synthetic",
            "data.synthetic_tasks",
            "must name at least one task",
        )
        need(o.grad_accum > 0, "optim.grad_accum", f"must be positive, got {o.grad_accum}")
        need(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
        need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        need(o.max_nonfinite > 0, "optim.max_nonfinite", "must be positive")
        need(
            o.train == "all" or not o.trainable,
            "optim.trainable",
            f"set either optim.train = {o.train!r} or trainable patterns, not both",
        )
        media = [t for t in d.synthetic_tasks if t in ("image", "audio")]
        need(
            not media or d.source != "synthetic" or d.mode == "pad",
            "data.mode",
            f'the {"/".join(media)} task(s) need mode = "pad" (media examples are not packed)',
        )
        need(d.max_images > 0, "data.max_images", "must be positive")
        need(d.length_groups >= 0, "data.length_groups", "must be >= 0")
        need(
            not d.length_groups or (d.mode == "pad" and d.source != "synthetic"),
            "data.length_groups",
            'groups the records of a JSONL source in mode = "pad"; set it to 0 here',
        )
        need(
            not d.length_groups or d.shuffle,
            "data.shuffle",
            "length_groups draws its own shuffled order; set shuffle = true or length_groups = 0",
        )
        need(d.pad_multiple > 0, "data.pad_multiple", "must be positive")
        need(d.max_audio_windows > 0, "data.max_audio_windows", "must be positive")
        need(self.checkpoint.every > 0, "checkpoint.every", "must be positive")
        need(self.checkpoint.keep > 0, "checkpoint.keep", "must be positive")
        dp = self.mesh.data * self.mesh.fsdp
        need(
            d.batch_size % dp == 0,
            "data.batch_size",
            f"{d.batch_size} must be divisible by mesh data*fsdp = {dp}",
        )
        k = self.distill
        need(0.0 <= k.alpha <= 1.0, "distill.alpha", f"must be in [0, 1], got {k.alpha}")
        need(k.temperature > 0, "distill.temperature", "must be positive")
        need(k.beta >= 0, "distill.beta", "must be >= 0")
        need(
            k.beta == 0 or bool(k.layer_map),
            "distill.layer_map",
            "beta > 0 needs (student, teacher) layer pairs",
        )
        return self


def _check_choices(obj: Any, source: str, prefix: str = "") -> None:
    """Literal-typed fields (and tuples of them) hold one of their allowed values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            _check_choices(value, source, f"{prefix}{f.name}.")
            continue
        if typing.get_origin(hint) is tuple and typing.get_args(hint):
            hint, values = typing.get_args(hint)[0], value
        else:
            values = (value,)
        if typing.get_origin(hint) is Literal:
            allowed = typing.get_args(hint)
            for v in values:
                if v not in allowed:
                    raise ConfigError(
                        f"recipe {source!r}: field `{prefix}{f.name}`: "
                        f"{v!r} is not one of {list(allowed)}"
                    )


def model_config(recipe: ModelRecipe) -> ModelConfig:
    """The preset's ModelConfig with the recipe's size and dtype overrides applied."""
    cfg = load_config(recipe.preset)
    sizes = {
        k: getattr(recipe, k)
        for k in ("num_layers", "d_model", "ffw_dim", "num_heads", "num_kv_heads", "head_dim")
        if getattr(recipe, k) is not None
    }
    if sizes:
        cfg = cfg.replace(text=cfg.text.replace(**sizes))
        cfg.text.validate(f"model preset {recipe.preset!r} with overrides {sizes}")
    return cfg.with_dtypes(recipe.param_dtype, recipe.dtype)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update: tables merge, other values replace."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> TrainRecipe:
    return from_dict(TrainRecipe, data, source=source).validate()


def load_recipe(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainRecipe:
    """A TrainRecipe from a TOML file (None: the defaults) plus nested `overrides`."""
    data: dict[str, Any] = {}
    source = "recipe"
    if path is not None:
        source = str(path)
        data = read_toml(path, "recipe file")
    return recipe_from_dict(merge(data, overrides or {}), source=source)
