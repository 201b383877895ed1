"""The top-level ModelConfig and preset loading (TOML files in configs/models/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from autoglm_jax.config._common import ConfigError, check, from_dict, read_toml, to_dict
from autoglm_jax.config.audio import AudioConfig, audio_config_from_hf
from autoglm_jax.config.fusion import FusionConfig
from autoglm_jax.config.text import TextConfig, check_hf_exportable, text_config_from_hf
from autoglm_jax.config.vision import VisionConfig, vision_config_from_hf, vision_config_to_hf
from autoglm_jax.config.vit import ViTConfig, vit_config_from_hf

ModelType = Literal["glm", "glm4", "glm4v", "whisper", "vit", "autoglm"]
MODEL_TYPES: tuple[str, ...] = ("glm", "glm4", "glm4v", "whisper", "vit", "autoglm")

# Modality memories that CGA fusion attends to, in the order they are concatenated.
AUDIO, VIT = "audio", "vit"

# configs/ lives at the repository root, next to the package (editable install).
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"

# transformers' Glm4vConfig defaults (GLM-4.1V); later GLM-V configs use other ids.
_GLM4V_TOKEN_DEFAULTS = {"image_token_id": 151343, "image_start_token_id": 151339,
                         "image_end_token_id": 151340, "video_token_id": 151344,
                         "video_start_token_id": 151341, "video_end_token_id": 151342}
_STACKS = ("text", "vision", "audio", "vit", "fusion")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model. Stacks that a model lacks are None.

    model_type   stacks
    glm, glm4    text
    glm4v        text + vision (+ the image/video token ids)
    whisper      audio (the Whisper encoder)
    vit          vit (a ViTModel encoder)
    autoglm      text + fusion, optional vision, and at least one of audio / vit

    Token ids come from a glm4v config.json's top level; `audio_token_id` (`<|audio|>`) is our
    extension, set when the tokenizer has one. `hf_architecture` is the transformers class a
    Hugging Face checkpoint was saved from (config.json `architectures[0]`); it picks key
    prefixes (WhisperModel vs WhisperForConditionalGeneration, ViTModel vs a classifier).
    """

    model_type: ModelType
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
        t = self.model_type
        check(t in MODEL_TYPES, source, "model_type",
              f"must be one of {list(MODEL_TYPES)}, got {t!r}")
        required = {"glm": ("text",), "glm4": ("text",), "glm4v": ("text", "vision"),
                    "whisper": ("audio",), "vit": ("vit",), "autoglm": ("text", "fusion")}[t]
        for name in required:
            check(getattr(self, name) is not None, source, name,
                  f"model_type {t!r} needs a [{name}] table")
        allowed = {"glm": ("text",), "glm4": ("text",), "glm4v": ("text", "vision"),
                   "whisper": ("audio",), "vit": ("vit",), "autoglm": _STACKS}[t]
        for name in _STACKS:
            if name not in allowed:
                check(getattr(self, name) is None, source, name,
                      f"model_type {t!r} has no {name} stack")
        if t == "autoglm":
            check(self.audio is not None or self.vit is not None, source, "audio",
                  "model_type 'autoglm' needs an [audio] or a [vit] encoder for fusion")
            if self.audio is not None:
                check(self.audio.max_source_positions % self.fusion.audio_stack == 0, source,
                      "fusion", f"audio_stack ({self.fusion.audio_stack}) must divide the "
                      f"audio frames per window ({self.audio.max_source_positions})")
        if self.vision is not None:
            check(self.image_token_id is not None, source, "image_token_id",
                  "a model with a vision tower needs image_token_id")
            check(self.vision.out_hidden_size == self.text.d_model, source, "vision",
                  f"out_hidden_size ({self.vision.out_hidden_size}) must equal the text "
                  f"d_model ({self.text.d_model}): image embeddings replace token embeddings")
            check(self.text.mrope_section is not None, source, "text",
                  "a model with a vision tower needs M-RoPE (text.mrope_section)")
        for name in ("image_token_id", "image_start_token_id", "image_end_token_id",
                     "video_token_id", "video_start_token_id", "video_end_token_id",
                     "audio_token_id"):
            value = getattr(self, name)
            if value is not None and self.text is not None:
                check(0 <= value < self.text.vocab_size, source, name,
                      f"{value} is outside the vocabulary (size {self.text.vocab_size})")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Memories CGA fusion attends to, in order ("audio", "vit"); empty without fusion."""
        if self.fusion is None:
            return ()
        return tuple(name for name, cfg in ((AUDIO, self.audio), (VIT, self.vit))
                     if cfg is not None)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def with_dtypes(self, param_dtype: str | None = None, dtype: str | None = None) -> "ModelConfig":
        """The same model with other parameter / compute dtypes (every stack)."""
        changes = {}
        for name in _STACKS:
            sub = getattr(self, name)
            if sub is not None:
                changes[name] = sub.replace(param_dtype=param_dtype or sub.param_dtype,
                                            dtype=dtype or sub.dtype)
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
                message = source + message[len("ModelConfig"):]
            raise ConfigError(message) from None


def _architecture(cfg: dict[str, Any]) -> str | None:
    archs = cfg.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None


def _token_ids(cfg: dict[str, Any], source: str) -> dict[str, int]:
    out = {}
    for name, default in _GLM4V_TOKEN_DEFAULTS.items():
        value = cfg.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: field `{name}`: expected an int, got {value!r}")
        out[name] = value
    return out


def glm4v_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """ModelConfig (model_type glm4v) from a Glm4vForConditionalGeneration config.json."""
    text = text_config_from_hf(cfg, source=source)
    vision = vision_config_from_hf(cfg, source=source)
    try:
        return ModelConfig(model_type="glm4v", text=text, vision=vision,
                           hf_architecture=_architecture(cfg), **_token_ids(cfg, source))
    except ConfigError as e:
        raise ConfigError(str(e).replace("ModelConfig", source, 1)) from None


def glm4v_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json dict for transformers' Glm4vForConditionalGeneration."""
    t, v = cfg.text, cfg.vision
    if t is None or v is None:
        raise ConfigError("glm4v export needs the text and vision stacks")
    check_hf_exportable(t)
    if t.num_heads * t.head_dim != t.d_model:
        raise ConfigError(
            f"TextConfig: field `head_dim`: transformers' Glm4vTextModel uses hidden_size / "
            f"num_attention_heads = {t.d_model // t.num_heads}, got {t.head_dim}")
    if not (t.sandwich_norm and t.attention_bias and t.mrope_section is not None):
        raise ConfigError("TextConfig: a glm4v decoder has sandwich norms (variant 'glm4'), "
                          "q/k/v biases and M-RoPE sections")
    text = {
        "model_type": "glm4v_text",
        "vocab_size": t.vocab_size,
        "hidden_size": t.d_model,
        "intermediate_size": t.ffw_dim,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                            "partial_rotary_factor": t.partial_rotary_factor,
                            "mrope_section": list(t.mrope_section)},
        "pad_token_id": t.pad_token_id,
    }
    if t.eos_token_ids:
        text["eos_token_id"] = list(t.eos_token_ids)
    out = {
        "model_type": "glm4v",
        "architectures": ["Glm4vForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision_config_to_hf(v),
        "tie_word_embeddings": t.tie_word_embeddings,
        "dtype": t.param_dtype,
    }
    for name in _GLM4V_TOKEN_DEFAULTS:
        value = getattr(cfg, name)
        if value is not None:
            out[name] = value
    return out


def model_config_from_hf(cfg: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict (glm, glm4, glm4v, whisper, vit)."""
    model_type = cfg.get("model_type")
    arch = _architecture(cfg)
    if model_type in ("glm", "glm4"):
        return ModelConfig(model_type=model_type, text=text_config_from_hf(cfg, source=source),
                           hf_architecture=arch)
    if model_type == "glm4v":
        return glm4v_config_from_hf(cfg, source=source)
    if model_type == "whisper":
        return ModelConfig(model_type="whisper", audio=audio_config_from_hf(cfg, source=source),
                           hf_architecture=arch)
    if model_type == "vit":
        return ModelConfig(model_type="vit", vit=vit_config_from_hf(cfg, source=source),
                           hf_architecture=arch)
    raise ConfigError(
        f"{source}: unsupported model_type {model_type!r} "
        "(supported: 'glm', 'glm4', 'glm4v', 'whisper', 'vit')")


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
    TOML path, a config.json path, or a checkpoint directory holding config.json."""
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
    data = read_toml(toml_path)
    return ModelConfig.from_dict(data, source=str(toml_path))
