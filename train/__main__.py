"""Training CLI: `python -m train pretrain|distill [--recipe FILE.toml] [--section.field VALUE ...]`.

The recipe file's values become the defaults of every option; options on the command line
override them (`--optim.lr 3e-4 --data.batch-size 16`). All logic lives in
`autoglm_jax.training`; this file only parses arguments.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Sequence

import tyro

from autoglm_jax.training.recipe import TrainRecipe, load_recipe


@dataclasses.dataclass(frozen=True)
class Pretrain:
    """Train a model on next-token prediction (loss on assistant tokens for chat data)."""

    cfg: Annotated[TrainRecipe, tyro.conf.arg(name="")]
    recipe: str | None = None
    """TOML recipe (configs/recipes/*.toml); its values are the defaults of the options below."""
    resume: bool = False
    """Continue from the latest checkpoint in run_dir (exactly: same batches, same updates)."""


@dataclasses.dataclass(frozen=True)
class Distill:
    """Distill a frozen teacher (distill.teacher) into the model: alpha * T^2 * KL +
    (1 - alpha) * CE + beta * hidden-state MSE."""

    cfg: Annotated[TrainRecipe, tyro.conf.arg(name="")]
    recipe: str | None = None
    """TOML recipe (configs/recipes/*.toml); its values are the defaults of the options below."""
    resume: bool = False
    """Continue from the latest checkpoint in run_dir (exactly: same batches, same updates)."""


def _peek_recipe(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--recipe" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--recipe="):
            return a.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> None:
    from autoglm_jax.config import ConfigError
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _peek_recipe(argv)
    try:
        base = load_recipe(path) if path else TrainRecipe()
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    cmd = tyro.cli(
        tyro.conf.OmitSubcommandPrefixes[
            Annotated[Pretrain, tyro.conf.subcommand("pretrain", default=Pretrain(base, path))]
            | Annotated[Distill, tyro.conf.subcommand("distill", default=Distill(base, path))]],
        args=argv, prog="python -m train", description=__doc__.split("\n\n")[0])
    from autoglm_jax.training import DataError, NonFiniteError, run_distill, run_pretrain
    try:
        recipe = cmd.cfg.validate()
        if isinstance(cmd, Distill):
            run_distill(recipe, resume=cmd.resume)
        else:
            run_pretrain(recipe, resume=cmd.resume)
    except (ConfigError, DataError, NonFiniteError, FileExistsError, FileNotFoundError,
            NotImplementedError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
