"""The top-level ModelConfig and preset loading (TOML files in configs/models/)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from autoglm_jax.config._common import ConfigError, from_dict, to_dict
from autoglm_jax.config.text import TextConfig, text_config_from_hf

ModelType = Literal["glm", "glm4"]

# configs/ lives at the repository root, next to the package (editable install).
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model. Stacks that a model lacks are None."""

    model_type: ModelType
    text: TextConfig | None = None

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def with_dtypes(self, param_dtype: str | None = None, dtype: str | None = None) -> "ModelConfig":
        """The same model with other parameter / compute dtypes."""
        changes = {}
        for name in ("text",):
            sub = getattr(self, name)
            if sub is not None:
                changes[name] = sub.replace(param_dtype=param_dtype or sub.param_dtype,
                                            dtype=dtype or sub.dtype)
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "ModelConfig":
        return from_dict(cls, data, source=source)


def model_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict."""
    model_type = cfg.get("model_type")
    if model_type in ("glm", "glm4"):
        return ModelConfig(model_type=model_type, text=text_config_from_hf(cfg, source=source))
    raise ConfigError(
        f"{source}: unsupported model_type {model_type!r} (supported: 'glm', 'glm4')")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(name_or_path: str | Path) -> ModelConfig:
    """A ModelConfig from a preset name (`tiny`, `glm-4-9b`, ...), a preset TOML path, a
    config.json path, or a checkpoint directory holding config.json."""
    path = Path(name_or_path)
    if path.is_dir():
        native = path / "autoglm_config.json"
        if native.exists():
            return ModelConfig.from_dict(read_json(native), source=str(native))
        return model_config_from_hf(read_json(path / "config.json"), source=str(path / "config.json"))
    if path.suffix == ".json" and path.exists():
        return model_config_from_hf(read_json(path), source=str(path))
    if path.suffix == ".toml" or path.exists():
        toml_path = path
    else:
        toml_path = PRESET_DIR / f"{name_or_path}.toml"
        if not toml_path.exists():
            raise ConfigError(
                f"unknown preset {str(name_or_path)!r}: no file {toml_path} "
                f"(presets: {', '.join(preset_names())})")
    try:
        with open(toml_path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{toml_path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{toml_path}: invalid TOML: {e}") from None
    return ModelConfig.from_dict(data, source=str(toml_path))
