"""Whisper (`model_type` whisper): its encoder, the audio stack of the AutoGLM composite.
The config.json reader (the `encoder_*` fields; the decoder is not ours), tensor maps and the
registry entry."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from autoglm_jax.config import AudioConfig, ConfigError, ModelConfig
from autoglm_jax.families import whisper_keys
from autoglm_jax.families.family import Family, hf_architecture, no_export
from autoglm_jax.nn.audio import WhisperEncoder

_REQUIRED = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim")
# Our field -> the Whisper config.json field.
_HF_FIELDS = {
    "d_model": "d_model",
    "num_layers": "encoder_layers",
    "num_heads": "encoder_attention_heads",
    "ffw_dim": "encoder_ffn_dim",
    "num_mel_bins": "num_mel_bins",
    "max_source_positions": "max_source_positions",
}
_HF_DEFAULTS = {"num_mel_bins": 80, "max_source_positions": 1500}


def audio_config_from_hf(
    cfg: dict[str, Any], *, source: str = "config.json", max_audio_seconds: float = 120.0
) -> AudioConfig:
    """AudioConfig from a Whisper config.json dict (its `encoder_*` fields).

    Defaults for absent optional fields follow transformers' WhisperConfig (80 mels, 1500
    source positions). The decoder fields are ignored. LayerNorm eps is 1e-5 (torch's default;
    WhisperConfig has no field for it).
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type != "whisper":
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} for the audio encoder "
            "(supported: 'whisper')"
        )
    for key in _REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{source}: missing required field `{key}`")
    act = cfg.get("activation_function", "gelu")
    if act != "gelu":
        raise ConfigError(
            f"{source}: field `activation_function`: only 'gelu' (exact) is supported, got {act!r}"
        )
    values: dict[str, Any] = {}
    for ours, theirs in _HF_FIELDS.items():
        value = cfg.get(theirs, _HF_DEFAULTS.get(theirs))
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: field `{theirs}`: expected an integer, got {value!r}")
        values[ours] = value
    try:
        return AudioConfig(max_audio_seconds=float(max_audio_seconds), **values)
    except ConfigError as e:
        message = str(e).replace("AudioConfig", source, 1)
        for ours, theirs in _HF_FIELDS.items():  # name the field as the file spells it
            message = message.replace(f"field `{ours}`", f"field `{theirs}`")
        raise ConfigError(message) from None


def _prefix(config: ModelConfig) -> str:
    return "encoder." if config.hf_architecture == "WhisperModel" else "model.encoder."


WHISPER = Family(
    name="whisper",
    config_from_hf=lambda raw, source: ModelConfig(
        model_type="whisper",
        audio=audio_config_from_hf(raw, source=source),
        hf_architecture=hf_architecture(raw),
    ),
    config_to_hf=no_export(
        "a bare Whisper encoder has no transformers class of its own; use "
        "the original Whisper checkpoint"
    ),
    build=lambda config, dot_general=None: WhisperEncoder(config.audio, dot_general),
    tensor_maps=lambda config: whisper_keys.hf_tensor_maps(config.audio, prefix=_prefix(config)),
    example_inputs=lambda config: (
        jnp.zeros((1, config.audio.num_mel_bins, config.audio.num_frames), jnp.float32),
    ),
    stacks=("audio",),
    ignored=lambda key, config: whisper_keys.is_ignored(key),
    param_stacks={"": "audio"},
)
