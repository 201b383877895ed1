"""The top-level ModelConfig and preset loading (TOML files in configs/models/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from autoglm_jax.config._common import ConfigError, check, from_dict, read_toml, to_dict
from autoglm_jax.config.audio import AudioConfig
from autoglm_jax.config.fusion import FusionConfig
from autoglm_jax.config.text import TextConfig
from autoglm_jax.config.vision import VisionConfig
from autoglm_jax.config.vit import ViTConfig

# Modality memories that CGA fusion attends to, in the order they are concatenated.
AUDIO, VIT = "audio", "vit"

# configs/ lives at the repository root, next to the package (editable install).
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"

_STACKS = ("text", "vision", "audio", "vit", "fusion")

# What each model_type needs is known to its family (autoglm_jax.families), which registers its
# check here, so a ModelConfig is checked when it is built without config importing families.
_family_checks: list[Callable[["ModelConfig", str], None]] = []


def register_family_check(check: Callable[["ModelConfig", str], None]) -> None:
    _family_checks.append(check)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model. Stacks that a model lacks are None.

    `model_type` names its family (`autoglm_jax.families`), which says which stacks it has
    (glm, glm4: text; glm4v: text + vision; whisper: audio; vit: vit; autoglm: text + fusion,
    optional vision, and at least one of audio / vit) and checks them on load and init.

    Token ids come from a glm4v config.json's top level; `audio_token_id` (`<|audio|>`) is our
    extension, set when the tokenizer has one. `hf_architecture` is the transformers class a
    Hugging Face checkpoint was saved from (config.json `architectures[0]`); it picks key
    prefixes (WhisperModel vs WhisperForConditionalGeneration, ViTModel vs a classifier).
    """

    model_type: str
    text: TextConfig | None = None
    vision: VisionConfig | None = None
    audio: AudioConfig | None = None
    vit: ViTConfig | None = None
    fusion: FusionConfig | None = None
    image_token_id: int | None = None
    image_start_token_id: int | None = None
    image_end_token_id: int | None = None
    video_token_id: int | None = None
    video_start_token_id: int | None = None
    video_end_token_id: int | None = None
    audio_token_id: int | None = None
    hf_architecture: str | None = None

    def __post_init__(self) -> None:
        self.validate("ModelConfig")

    def validate(self, source: str) -> None:
        check(
            isinstance(self.model_type, str) and bool(self.model_type),
            source,
            "model_type",
            f"must be a model family name, got {self.model_type!r}",
        )
        check(
            any(getattr(self, name) is not None for name in _STACKS),
            source,
            "text",
            "a model needs at least one stack ([text], [vision], [audio], [vit])",
        )
        if self.vision is not None:
            check(
                self.text is not None,
                source,
                "text",
                "a vision tower feeds a text decoder: the model needs a [text] table",
            )
            check(
                self.image_token_id is not None,
                source,
                "image_token_id",
                "a model with a vision tower needs image_token_id",
            )
            check(
                self.vision.out_hidden_size == self.text.d_model,
                source,
                "vision",
                f"out_hidden_size ({self.vision.out_hidden_size}) must equal the text "
                f"d_model ({self.text.d_model}): image embeddings replace token embeddings",
            )
            check(
                self.text.mrope_section is not None,
                source,
                "text",
                "a model with a vision tower needs M-RoPE (text.mrope_section)",
            )
        for name in (
            "image_token_id",
            "image_start_token_id",
            "image_end_token_id",
            "video_token_id",
            "video_start_token_id",
            "video_end_token_id",
            "audio_token_id",
        ):
            value = getattr(self, name)
            if value is not None and self.text is not None:
                check(
                    0 <= value < self.text.vocab_size,
                    source,
                    name,
                    f"{value} is outside the vocabulary (size {self.text.vocab_size})",
                )
        for family_check in _family_checks:
            family_check(self, source)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Memories CGA fusion attends to, in order ("audio", "vit"); empty without fusion."""
        if self.fusion is None:
            return ()
        return tuple(
            name for name, cfg in ((AUDIO, self.audio), (VIT, self.vit)) if cfg is not None
        )

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def with_dtypes(
        self, param_dtype: str | None = None, dtype: str | None = None
    ) -> "ModelConfig":
        """The same model with other parameter / compute dtypes (every stack)."""
        changes = {}
        for name in _STACKS:
            sub = getattr(self, name)
            if sub is not None:
                changes[name] = sub.replace(
                    param_dtype=param_dtype or sub.param_dtype, dtype=dtype or sub.dtype
                )
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "ModelConfig":
        try:
            return from_dict(cls, data, source=source)
        except ConfigError as e:
            message = str(e)
            if message.startswith("ModelConfig:"):
                message = source + message[len("ModelConfig") :]
            raise ConfigError(message) from None


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
    """A ModelConfig from a preset name (`tiny`, `glm-4-9b`, `autoglm-phone-9b`, ...), a preset
    TOML path, or a directory written by `ag.save` (its autoglm_config.json). Hugging Face
    config.json files are read by `autoglm_jax.load_config` (the model families know them)."""
    path = Path(name_or_path)
    if path.is_dir():
        native = path / "autoglm_config.json"
        if not native.exists():
            raise ConfigError(
                f"{path}: no autoglm_config.json (a Hugging Face directory is read "
                "by autoglm_jax.load_config)"
            )
        return ModelConfig.from_dict(read_json(native), source=str(native))
    if path.name == "autoglm_config.json":
        return ModelConfig.from_dict(read_json(path), source=str(path))
    if path.suffix == ".json":
        raise ConfigError(f"{path}: a Hugging Face config.json is read by autoglm_jax.load_config")
    if path.suffix == ".toml" or path.exists():
        toml_path = path
    else:
        toml_path = PRESET_DIR / f"{name_or_path}.toml"
        if not toml_path.exists():
            raise ConfigError(
                f"unknown preset {str(name_or_path)!r}: no file {toml_path} "
                f"(presets: {', '.join(preset_names())})"
            )
    data = read_toml(toml_path)
    return ModelConfig.from_dict(data, source=str(toml_path))
