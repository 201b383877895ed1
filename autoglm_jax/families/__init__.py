"""The model families, one module each, and the registry table that names them.

    family = get_family(config.model_type, source)   # or family_of(config)
    module = family.build(config)
    cfg = load_config("path/to/hf_dir")               # presets, ag.save dirs, config.json

To add a family: a module here with its config.json reader, tensor maps and `Family` entry,
and one line in `FAMILIES` (see docs/architecture.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from autoglm_jax.config import ConfigError, ModelConfig, read_json
from autoglm_jax.config import load_config as load_native_or_preset
from autoglm_jax.config.model import register_family_check
from autoglm_jax.families.autoglm import AUTOGLM, compose_autoglm
from autoglm_jax.families.family import Family
from autoglm_jax.families.glm import GLM, GLM4
from autoglm_jax.families.glm4v import GLM4V
from autoglm_jax.families.llama import LLAMA
from autoglm_jax.families.qwen2 import QWEN2
from autoglm_jax.families.vit import VIT
from autoglm_jax.families.whisper import WHISPER
from autoglm_jax.nn.layers import DotGeneral

FAMILIES: dict[str, Family] = {
    f.name: f for f in (GLM, GLM4, GLM4V, QWEN2, LLAMA, WHISPER, VIT, AUTOGLM)
}


def abstract_params(module: nn.Module, init_args: tuple[Any, ...]) -> Any:
    """The boxed (logically partitioned) parameter tree as ShapeDtypeStructs, no memory used."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *init_args))["params"]


def register(family: Family) -> None:
    """Add (or replace) a family at run time (the table above is the shipped set)."""
    FAMILIES[family.name] = family


def get_family(model_type: Any, source: str) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} (supported: {sorted(FAMILIES)})"
        )
    return FAMILIES[model_type]


def family_of(config: ModelConfig) -> Family:
    return get_family(config.model_type, "ModelConfig")


def decoder_path(config: ModelConfig) -> tuple[str, ...]:
    """Where the GLM text decoder sits in the model's module and param tree (what quantization
    rules and pruning are relative to)."""
    path = family_of(config).decoder_path
    if path is None:
        raise ValueError(
            f"model_type {config.model_type!r} has no GLM decoder to quantize or prune"
        )
    return path


def config_from_hf(raw: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict, read by its family."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    return get_family(raw.get("model_type"), source).config_from_hf(raw, source)


def load_config(name_or_path: str | Path) -> ModelConfig:
    """A ModelConfig from a preset name (`tiny`, `glm-4-9b`, `autoglm-phone-9b`, ...), a preset
    TOML path, a config.json path, or a checkpoint directory (Hugging Face or `ag.save`)."""
    path = Path(name_or_path)
    if path.is_dir() and not (path / "autoglm_config.json").exists():
        path = path / "config.json"
        if not path.exists():
            raise ConfigError(
                f"{path.parent}: no config.json (not a Hugging Face checkpoint) "
                "and no autoglm_config.json"
            )
    if path.suffix == ".json" and path.name != "autoglm_config.json":
        return config_from_hf(read_json(path), source=str(path))
    return load_native_or_preset(name_or_path)


register_family_check(
    lambda config, source: get_family(config.model_type, source).validate(config, source)
)


def build_module(config: ModelConfig, dot_general: DotGeneral | None = None) -> nn.Module:
    """The Flax module of any family."""
    return family_of(config).build(config, dot_general)


def example_inputs(config: ModelConfig) -> tuple[Any, ...]:
    """Small positional inputs that touch every parameter (`module.init`, eval_shape)."""
    return family_of(config).example_inputs(config)


_STACK_ORDER = ("text", "vision", "audio", "vit", "projectors", "cga")


def count_params_by_stack(config: ModelConfig) -> dict[str, int]:
    """Parameters per stack from `jax.eval_shape` (no memory used): keys among text, vision,
    audio, vit, projectors (CGA's modality projectors), cga (the gated blocks), and total."""
    family = family_of(config)
    module = family.build(config, None)
    args = family.example_inputs(config)
    shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"])

    def count(tree: Any) -> int:
        return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))

    out: dict[str, int] = {}
    if "" in family.param_stacks:  # the whole tree is one stack
        out[family.param_stacks[""]] = count(shapes)
    else:
        for name, sub in shapes.items():
            stack = family.param_stacks[name]
            if stack == "fusion":
                out["projectors"] = count(
                    {k: v for k, v in sub.items() if k.endswith("_projector")}
                )
                out["cga"] = count({k: v for k, v in sub.items() if k.startswith("blocks_")})
            else:
                out[stack] = count(sub)
    out = {k: out[k] for k in _STACK_ORDER if k in out}
    out["total"] = sum(out.values())
    return out


__all__ = [
    "FAMILIES",
    "Family",
    "abstract_params",
    "build_module",
    "compose_autoglm",
    "config_from_hf",
    "count_params_by_stack",
    "decoder_path",
    "example_inputs",
    "family_of",
    "get_family",
    "load_config",
    "register",
]
