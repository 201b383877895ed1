"""Training CLI: `python -m train pretrain|distill|qat|prune|export|vision|report
[--recipe FILE.toml] [--section.field VALUE ...]`.

The recipe file's values become the defaults of every option; options on the command line
override them (`--optim.lr 3e-4 --data.batch-size 16`). All logic lives in
`autoglm_jax.training`; this file only parses arguments.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Any, Literal, Sequence

import tyro

from autoglm_jax.checkpoint import CheckpointError
from autoglm_jax.config.quant import PruneConfig, QuantConfig
from autoglm_jax.distributed import DistributedConfig, initialize, is_primary
from autoglm_jax.training.compress import load_compress_recipe
from autoglm_jax.training.recipe import TrainRecipe
from train.report import ReportOptions, run_report


@dataclasses.dataclass(frozen=True)
class Pretrain:
    """Train a model on next-token prediction (loss on assistant tokens for chat data)."""

    cfg: Annotated[TrainRecipe, tyro.conf.arg(name="")]
    recipe: str | None = None
    """TOML recipe (configs/recipes/*.toml); its values are the defaults of the options below."""
    resume: bool = False
    """Continue from the latest checkpoint in run_dir (exactly: same batches, same updates)."""
    distributed: DistributedConfig = DistributedConfig()


@dataclasses.dataclass(frozen=True)
class Distill:
    """Distill a frozen teacher (distill.teacher) into the model: alpha * T^2 * KL +
    (1 - alpha) * CE + beta * hidden-state MSE."""

    cfg: Annotated[TrainRecipe, tyro.conf.arg(name="")]
    recipe: str | None = None
    """TOML recipe (configs/recipes/*.toml); its values are the defaults of the options below."""
    resume: bool = False
    """Continue from the latest checkpoint in run_dir (exactly: same batches, same updates)."""
    distributed: DistributedConfig = DistributedConfig()


@dataclasses.dataclass(frozen=True)
class QuantOptions:
    """The [quant] table's scalar fields (its `rules` come from the recipe file only)."""

    weights: Literal["int8", "int4"] = "int8"
    """int8: one scale per output channel; int4: one scale per group, two values per byte."""
    group_size: int = 128
    """int4: input channels per scale."""
    activations: Literal["none", "int8"] = "none"
    """int8: dynamic per-token activation quantization too."""
    weight_clip: float = 1.0
    """scale = weight_clip * max|w| / qmax (below 1 clips the largest weights)."""
    scope: Literal["decoder", "all"] = "decoder"
    """decoder: the GLM decoder's matmuls; all: the encoders' and CGA fusion's too."""

    @staticmethod
    def of(q: QuantConfig) -> "QuantOptions":
        return QuantOptions(q.weights, q.group_size, q.activations, q.weight_clip, q.scope)


@dataclasses.dataclass(frozen=True)
class Qat:
    """Quantization-aware training: the model with the [quant] table's fake-quantized matmuls
    (float param tree), distilled from distill.teacher when set, else next-token loss. Then
    `export` writes the integer checkpoint."""

    cfg: Annotated[TrainRecipe, tyro.conf.arg(name="")]
    quant: QuantOptions = QuantOptions()
    recipe: str | None = None
    """TOML recipe (configs/recipes/qat-*.toml); its values are the defaults of the options
    below."""
    resume: bool = False
    """Continue from the latest checkpoint in run_dir (exactly: same batches, same updates)."""
    distributed: DistributedConfig = DistributedConfig()


@dataclasses.dataclass(frozen=True)
class Prune:
    """Structured pruning of the unpruned model (distill.teacher) to prune.flops_reduction of
    its decoder FLOPs, ranked on the recipe's data; writes <run_dir>/pruned. Recover it with
    `python -m train distill` (model.init_from = that directory), or here with --recover."""

    cfg: Annotated[TrainRecipe, tyro.conf.arg(name="")]
    prune: PruneConfig = PruneConfig()
    recipe: str | None = None
    """TOML recipe (configs/recipes/prune-35.toml); its values are the defaults of the options
    below."""
    out: str | None = None
    """Where the pruned model goes (default: <run_dir>/pruned)."""
    recover: bool = False
    """Then distill the unpruned model into the pruned one with this recipe (same run)."""


@dataclasses.dataclass(frozen=True)
class Export:
    """Write the compressed checkpoint (integer weights plus scales) of a QAT run's model."""

    qat_checkpoint: str
    """The QAT run's model directory (<run_dir>/model)."""
    format: Literal["int8", "int4"] = "int8"
    recipe: str | None = None
    """The QAT recipe: its [quant] rules are used (needed for logits equal to QAT's);
    without it, QuantConfig(weights=format) with the default rules."""
    out: str | None = None
    """Output directory (default: <qat_checkpoint>-<format>)."""
    scope: Literal["decoder", "all"] | None = None
    """Which matmuls (as QAT's --quant.scope); default: the recipe's, else decoder."""


@dataclasses.dataclass(frozen=True)
class VisionOptions:
    screens: int = 4000
    """Train screens: one per train-split task from task seed 300,000, after 0-3 oracle
    steps."""
    heldout_screens: int = 300
    """Held-out screens (held-out tasks 0..) the accuracy is measured on."""
    eval_every: int = 100
    """Steps between held-out evaluations (logged to <run_dir>/metrics.jsonl)."""
    position_weight: float = 0.0
    """Also train two heads on each token's row and column, at this weight against the class
    loss, so that the tower's output says where a token is (0: classes only)."""


@dataclasses.dataclass(frozen=True)
class Vision:
    """Pretrain the vision tower alone on the simulated phone's screens: for each vision token,
    which element lies under it (a linear head, then thrown away). Writes <run_dir>/model, the
    trained tower with the rest of the initial model, for a decoder run that keeps the tower
    frozen (optim.trainable = ["language_model/*"]); see docs/agent.md."""

    cfg: Annotated[TrainRecipe, tyro.conf.arg(name="")]
    vision: VisionOptions = VisionOptions()
    recipe: str | None = None
    """TOML recipe (configs/recipes/phone-agent-vision.toml): steps, run_dir, [optim], [model],
    data.batch_size and data.seed are used."""


@dataclasses.dataclass(frozen=True)
class Report:
    """Build the compression table (teacher, float control, int8 QAT, int4 QAT, pruned +
    distilled, pruned + distilled + int8 QAT; int8 of every stack for a composite) on the
    synthetic image task: report.md, report.json, report.png (--docs: into that file too)."""

    opts: Annotated[ReportOptions, tyro.conf.arg(name="")] = ReportOptions()


def _peek_recipe(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--recipe" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--recipe="):
            return a.split("=", 1)[1]
    return None


def _say_where(model_dir: Any, what: str, export: str | None = None) -> None:
    """The last lines of a run: where the model is and the command that runs it (process 0
    only, in a multi-process run)."""
    if not is_primary():
        return
    print(f"{what}: {model_dir}")
    if export is not None:
        recipe = f" --recipe {export}" if export else ""
        print(f"export it:  python -m train export --qat-checkpoint {model_dir}{recipe}")
    else:
        print(f"chat with it:  python -m infer chat --model {model_dir}")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    from autoglm_jax.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    path = _peek_recipe(argv)
    try:
        loaded = load_compress_recipe(path) if path else None
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    base = loaded.train_recipe() if loaded else TrainRecipe()
    quant = loaded.quant if loaded and loaded.quant else QuantConfig()
    prune = loaded.prune if loaded and loaded.prune else PruneConfig()
    export_default = Export("", quant.weights, path)
    cmd = tyro.cli(
        tyro.conf.OmitSubcommandPrefixes[
            Annotated[Pretrain, tyro.conf.subcommand("pretrain", default=Pretrain(base, path))]
            | Annotated[Distill, tyro.conf.subcommand("distill", default=Distill(base, path))]
            | Annotated[
                Qat, tyro.conf.subcommand("qat", default=Qat(base, QuantOptions.of(quant), path))
            ]
            | Annotated[Prune, tyro.conf.subcommand("prune", default=Prune(base, prune, path))]
            | Annotated[Export, tyro.conf.subcommand("export", default=export_default)]
            | Annotated[Vision, tyro.conf.subcommand("vision", default=Vision(base, recipe=path))]
            | Annotated[Report, tyro.conf.subcommand("report", default=Report())]
        ],
        args=argv,
        prog="python -m train",
        description=__doc__.split("\n\n")[0],
    )
    from autoglm_jax.training import DataError, NonFiniteError, run_distill, run_pretrain
    from autoglm_jax.training import compress as tc

    try:
        if isinstance(cmd, (Pretrain, Distill, Qat)):
            initialize(cmd.distributed)  # before anything touches a device
        if isinstance(cmd, Report):
            run_report(cmd.opts)
            return
        if isinstance(cmd, Export):
            if not cmd.qat_checkpoint:
                raise ConfigError("export needs --qat-checkpoint DIR")
            out = tc.run_export(
                cmd.qat_checkpoint, cmd.format, recipe=loaded, out_dir=cmd.out, scope=cmd.scope
            )
            _say_where(out, "the compressed model")
            return
        recipe = cmd.cfg.validate()
        if isinstance(cmd, Vision):
            from train.vision import run_vision

            out = run_vision(recipe, **dataclasses.asdict(cmd.vision))
            if is_primary():
                print(f"the trained tower (and the initial decoder): {out}")
                print(
                    f"train a decoder on it:  python -m train pretrain --model.init-from {out} "
                    "--optim.trainable 'language_model/*' ..."
                )
        elif isinstance(cmd, Qat):
            q = quant.replace(**dataclasses.asdict(cmd.quant))
            q.validate("--quant")
            result = tc.run_qat(tc.CompressRecipe.of(recipe, quant=q), resume=cmd.resume)
            _say_where(result.run_dir / "model", "the QAT model (float weights)", export=path)
        elif isinstance(cmd, Prune):
            pruned = tc.run_prune(
                tc.CompressRecipe.of(recipe, prune=cmd.prune), out_dir=cmd.out, recover=cmd.recover
            )
            out = (
                pruned.recovered.run_dir / "model"
                if pruned.recovered is not None and recipe.checkpoint.export
                else pruned.out_dir
            )
            _say_where(out, "the pruned model")
        else:
            if loaded is not None and loaded.quant is not None:
                raise ConfigError(
                    f"{path} has a [quant] table: run it with `python -m train "
                    "qat` (pretrain/distill would train a float model)"
                )
            run = run_distill if isinstance(cmd, Distill) else run_pretrain
            result = run(recipe, resume=cmd.resume)
            if recipe.checkpoint.export:
                _say_where(result.run_dir / "model", "the trained model")
    except (
        ConfigError,
        CheckpointError,
        DataError,
        NonFiniteError,
        FileExistsError,
        FileNotFoundError,
        NotImplementedError,
    ) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
