"""What one model family (a `model_type`) tells the rest of the package.

Everything that differs between families lives in its `Family` entry (one module per family in
this package, listed in `FAMILIES`); code elsewhere asks the entry and never compares
`model_type` strings. Adding a family is a new module here plus one line in the table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from autoglm_jax.config import ConfigError, ModelConfig
from autoglm_jax.families.keymap import TensorMap
from autoglm_jax.nn.layers import DotGeneral

STACKS = ("text", "vision", "audio", "vit", "fusion")


def _never(key: str, config: ModelConfig) -> bool:
    return False


def _no_checks(config: ModelConfig, source: str) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    name            the model_type (config.json's, and ModelConfig.model_type)
    config_from_hf  (config.json dict, source for errors) -> ModelConfig
    config_to_hf    ModelConfig -> config.json dict (`ag.export_hf`); raises ConfigError when
                    the family has no transformers layout
    build           (config, dot_general or None) -> the Flax module
    tensor_maps     config -> every HF tensor <-> param path (safetensors in and out)
    example_inputs  config -> small positional inputs that touch every parameter (`module.init`,
                    eval_shape)
    stacks          the ModelConfig stacks it must have; `optional_stacks` it may have
    ignored         (HF key, config) -> True for checkpoint keys of parts we do not model
    decoder_path    where the GLM text decoder sits in the module and param tree (quantization
                    rules and pruning work relative to it); None: the family has no decoder
    multimodal      the module takes the multimodal call (pixel_values, image_grid_thw, ...;
                    the engine then runs encoders and splices their output)
    param_stacks    top-level param name -> stack name (`count_params_by_stack`); a family
                    whose params are one stack maps "" to it
    check           extra consistency checks of a config of this family (errors name `source`)
    """

    name: str
    config_from_hf: Callable[[dict[str, Any], str], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    build: Callable[[ModelConfig, DotGeneral | None], nn.Module]
    tensor_maps: Callable[[ModelConfig], list[TensorMap]]
    example_inputs: Callable[[ModelConfig], tuple[Any, ...]]
    stacks: tuple[str, ...]
    optional_stacks: tuple[str, ...] = ()
    ignored: Callable[[str, ModelConfig], bool] = _never
    decoder_path: tuple[str, ...] | None = None
    multimodal: bool = False
    param_stacks: dict[str, str] = dataclasses.field(default_factory=dict)
    check: Callable[[ModelConfig, str], None] = _no_checks

    def init_args(self, config: ModelConfig) -> tuple[Any, ...]:
        """Positional inputs for `module.init` (shapes only matter under eval_shape)."""
        return self.example_inputs(config)

    def validate(self, config: ModelConfig, source: str) -> ModelConfig:
        """The stacks this family needs and allows, then its own checks; returns config."""
        for name in self.stacks:
            if getattr(config, name) is None:
                raise ConfigError(
                    f"{source}: field `{name}`: model_type {self.name!r} needs a [{name}] table"
                )
        allowed = set(self.stacks) | set(self.optional_stacks)
        for name in STACKS:
            if name not in allowed and getattr(config, name) is not None:
                raise ConfigError(
                    f"{source}: field `{name}`: model_type {self.name!r} has no {name} stack"
                )
        self.check(config, source)
        return config


def no_export(why: str) -> Callable[[ModelConfig], dict[str, Any]]:
    """A `config_to_hf` for families with no transformers layout."""

    def fail(config: ModelConfig) -> dict[str, Any]:
        raise ConfigError(f"export_hf: {why}")

    return fail


def hf_architecture(raw: dict[str, Any]) -> str | None:
    """config.json's `architectures[0]` (the transformers class it was saved from)."""
    archs = raw.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None
